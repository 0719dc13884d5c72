// Load a Yjs update (v1) into a fresh Y.Doc and print it as canonical JSON, as the agents do
// (yjs_agent.mjs), for tests/interop/doc.sh:
//
//   node yjs_apply.mjs FILE
import { readFileSync } from 'node:fs'
import * as Y from 'yjs'

const sortKeys = (v) => {
  if (Array.isArray(v)) return v.map(sortKeys)
  if (v && typeof v === 'object') {
    return Object.fromEntries(Object.keys(v).sort().map(k => [k, sortKeys(v[k])]))
  }
  return v
}
const doc = new Y.Doc()
Y.applyUpdate(doc, new Uint8Array(readFileSync(process.argv[2])))
const pending = doc.store.pendingStructs !== null || doc.store.pendingDs !== null
if (pending) {
  console.error('the update depends on content it does not hold')
  process.exit(1)
}
process.stdout.write(JSON.stringify(sortKeys({
  a: doc.getArray('a').toJSON(),
  m: doc.getMap('m').toJSON(),
  t: doc.getText('t').toString()
})) + '\n')
