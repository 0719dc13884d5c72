// One y-websocket (3.x) client for tests/interop/doc.sh.
//
//   node yjs_agent.mjs --url ws://127.0.0.1:PORT/doc --room ROOM --name js [--edit]
//        [--expect js,wire,py,rust] [--timeout 20] [--linger 0.5]
//   node yjs_agent.mjs ... --aw-expect PEER [--aw-gone] [--aw-hold]
//        awareness: set the local state {name: NAME}, wait until PEER's state arrives (prints
//        "aw-seen PEER"); --aw-gone: then wait until PEER's state is removed ("aw-gone PEER");
//        --aw-hold: then stay connected until killed (or --timeout).
//
// Connects WebsocketProvider(url, room) (so the socket URL is url + "/" + room), waits for
// the first sync, then with --edit makes this client's edits in ONE transaction:
//   text t  += "[NAME]"        (appended at the end)
//   map  m  .NAME = "NAME", m["n_NAME"] = <number>
//   array a .push(["NAME"])
// then waits (bounded) until the contributions of every --expect client are present, lingers
// so its own update leaves the socket, and prints the document as canonical JSON (sorted keys)
// on the last stdout line. Progress goes to stderr. Exit 0 on success, 1 on timeout/error.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const args = { url: '', room: '', name: 'js', edit: false, expect: [], timeout: 20, linger: 0.5, token: '', awExpect: '', awGone: false, awHold: false }
const argv = process.argv.slice(2)
for (let i = 0; i < argv.length; i++) {
  const k = argv[i]
  const v = () => { i++; if (i >= argv.length) fail(`missing value for ${k}`); return argv[i] }
  switch (k) {
    case '--url': args.url = v(); break
    case '--room': args.room = v(); break
    case '--name': args.name = v(); break
    case '--edit': args.edit = true; break
    case '--expect': args.expect = v().split(',').filter(Boolean); break
    case '--timeout': args.timeout = Number(v()); break
    case '--linger': args.linger = Number(v()); break
    case '--token': args.token = v(); break
    case '--aw-expect': args.awExpect = v(); break
    case '--aw-gone': args.awGone = true; break
    case '--aw-hold': args.awHold = true; break
    default: fail(`unknown argument ${k}`)
  }
}
if (!args.url || !args.room) fail('need --url and --room')

const t0 = Date.now()
const log = (...m) => console.error(`[yjs ${args.name} +${Date.now() - t0}ms]`, ...m)
function fail (msg) { console.error(`[yjs] FAIL: ${msg}`); process.exit(1) }

// Same number for every implementation of a client name: sum of char codes.
export const numberFor = (name) => [...name].reduce((s, c) => s + c.charCodeAt(0), 0)

const sortKeys = (v) => {
  if (Array.isArray(v)) return v.map(sortKeys)
  if (v && typeof v === 'object') {
    return Object.fromEntries(Object.keys(v).sort().map(k => [k, sortKeys(v[k])]))
  }
  return v
}
const canon = (doc) => sortKeys({
  a: doc.getArray('a').toJSON(),
  m: doc.getMap('m').toJSON(),
  t: doc.getText('t').toString()
})

const missing = (doc) => {
  const t = doc.getText('t').toString()
  const m = doc.getMap('m')
  const a = doc.getArray('a').toArray()
  const out = []
  for (const e of args.expect) {
    if (!t.includes(`[${e}]`)) out.push(`t lacks [${e}]`)
    if (m.get(e) !== e) out.push(`m.${e} != "${e}"`)
    if (Number(m.get(`n_${e}`)) !== numberFor(e)) out.push(`m.n_${e} != ${numberFor(e)}`)
    if (!a.includes(e)) out.push(`a lacks "${e}"`)
  }
  return out
}

const doc = new Y.Doc()
const params = args.token ? { token: args.token } : {}
const provider = new WebsocketProvider(args.url, args.room, doc, {
  WebSocketPolyfill: WebSocket,
  disableBc: true,
  params
})
provider.on('connection-close', (ev) => log('connection closed', ev ? ev.code : ''))
provider.on('connection-error', () => log('connection error'))

const deadline = setTimeout(() => {
  if (args.awExpect) fail(`timed out after ${args.timeout}s; synced=${provider.synced}; awareness states: ${JSON.stringify([...provider.awareness.getStates().entries()])}`)
  fail(`timed out after ${args.timeout}s; synced=${provider.synced}; missing: ${missing(doc).join('; ') || '-'}; doc: ${JSON.stringify(canon(doc))}`)
}, args.timeout * 1000)

const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))

const peerState = () => [...provider.awareness.getStates().entries()]
  .find(([id, st]) => id !== doc.clientID && st && st.name === args.awExpect)

async function awareness () {
  provider.awareness.setLocalStateField('name', args.name)
  while (!peerState()) await sleep(20)
  process.stdout.write(`aw-seen ${args.awExpect}\n`)
  log('sees the awareness state of', args.awExpect)
  if (args.awHold) { // until killed, or --timeout seconds at most
    clearTimeout(deadline)
    setTimeout(() => process.exit(0), args.timeout * 1000)
    await new Promise(() => {})
  }
  if (args.awGone) {
    const t = Date.now()
    while (peerState()) await sleep(20)
    log(`the state of ${args.awExpect} was removed after ${Date.now() - t} ms`)
    process.stdout.write(`aw-gone ${args.awExpect}\n`)
  }
  clearTimeout(deadline)
  provider.destroy()
  setTimeout(() => process.exit(0), 100)
}

async function main () {
  while (!provider.synced) await sleep(20)
  if (args.awExpect) return awareness()
  log('synced', JSON.stringify(canon(doc)))
  if (args.edit) {
    doc.transact(() => {
      const t = doc.getText('t')
      t.insert(t.length, `[${args.name}]`)
      doc.getMap('m').set(args.name, args.name)
      doc.getMap('m').set(`n_${args.name}`, numberFor(args.name))
      doc.getArray('a').push([args.name])
    })
    log('edited')
  }
  while (missing(doc).length > 0) await sleep(20)
  if (args.expect.length) log('has every expected contribution')
  await sleep(args.linger * 1000)
  const ws = provider.ws
  while (ws && ws.bufferedAmount > 0) await sleep(20)
  const out = JSON.stringify(canon(doc))
  clearTimeout(deadline)
  provider.destroy()
  process.stdout.write(out + '\n', () => process.exit(0))
}
main().catch(e => fail(e && e.stack ? e.stack : String(e)))
