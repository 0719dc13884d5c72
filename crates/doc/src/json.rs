//! [`doc_to_json`]: a document's root types as JSON (for `nimbus doc dump`, IPC `doc.get`
//! and tests).

use serde_json::{Map as JsonMap, Number, Value};
use yrs::types::ToJson;
use yrs::{Any, ArrayRef, Doc, GetString, MapRef, Out, ReadTxn, TextRef, Transact};

/// Every root type of `doc` as one JSON object: text → string, map → object, array →
/// array, XML → its XML string. A root whose type the document has not declared (a server
/// that never called `get_or_insert_*` sees every root so) is read by its content, the
/// sequence first: text content → string, other sequence items → array, and only when the
/// sequence is empty, map entries → object; an empty root → `null`.
///
/// Why the sequence first: a Yjs root has a sequence part and a map part, and a client
/// sees only the part of the type it declared (`getText`/`getArray`/`getXmlFragment` read
/// the sequence, `getMap` the map; yrs reinterprets a root the same way). The update
/// format does not say which type a root was declared with, so a client can write map
/// entries under a root every other client reads as text; they stay invisible to those
/// clients and must not replace the text in this view. (The reverse, sequence items written
/// under a root the clients read as a map, shows the sequence: without the declared type
/// no rule can tell the two apart.)
pub fn doc_to_json(doc: &Doc) -> Value {
    let txn = doc.transact();
    let mut out = JsonMap::new();
    let mut roots: Vec<(String, Out)> = txn.root_refs().map(|(k, v)| (k.to_owned(), v)).collect();
    roots.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in roots {
        let v = match value {
            Out::UndefinedRef(branch) => {
                let map = MapRef::from(branch);
                let text = TextRef::from(branch);
                let array = ArrayRef::from(branch);
                let s = text.get_string(&txn);
                if !s.is_empty() {
                    Value::String(s)
                } else if yrs::Array::len(&array, &txn) > 0 {
                    any_to_json(&array.to_json(&txn))
                } else if yrs::Map::len(&map, &txn) > 0 {
                    any_to_json(&map.to_json(&txn))
                } else {
                    Value::Null
                }
            }
            other => any_to_json(&other.to_json(&txn)),
        };
        out.insert(name, v);
    }
    Value::Object(out)
}

/// A yrs [`Any`] as JSON (buffers become arrays of byte values; `undefined` → `null`).
pub fn any_to_json(any: &Any) -> Value {
    match any {
        Any::Null | Any::Undefined => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(yrs::any::Number::Int(i)) => Value::Number(Number::from(*i)),
        Any::Number(yrs::any::Number::Float(f)) => {
            if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
                Value::Number(Number::from(*f as i64))
            } else {
                Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
        }
        Any::String(s) => Value::String(s.to_string()),
        Any::Buffer(b) => Value::Array(b.iter().map(|x| Value::Number(Number::from(*x))).collect()),
        Any::Array(a) => Value::Array(a.iter().map(any_to_json).collect()),
        Any::Map(m) => {
            let mut entries: Vec<(&String, &Any)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), any_to_json(v)))
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;
    use yrs::updates::decoder::Decode;
    use yrs::{Array, Map, StateVector, Text, Update, WriteTxn, XmlFragment, XmlTextPrelim};

    #[test]
    fn every_root_type_declared_or_not() {
        let doc = Doc::new();
        let t = doc.get_or_insert_text("t");
        let m = doc.get_or_insert_map("m");
        let a = doc.get_or_insert_array("a");
        let x = doc.get_or_insert_xml_fragment("x");
        {
            let mut txn = doc.transact_mut();
            t.insert(&mut txn, 0, "héllo");
            m.insert(&mut txn, "n", 1);
            m.insert(&mut txn, "f", 1.5);
            m.insert(&mut txn, "s", "str");
            a.push_back(&mut txn, true);
            a.push_back(&mut txn, "x");
            x.push_back(&mut txn, XmlTextPrelim::new("xml"));
            let _ = txn.get_or_insert_text("empty");
        }
        let expected = json!({
            "a": [true, "x"], "empty": "", "m": {"f": 1.5, "n": 1, "s": "str"}, "t": "héllo", "x": "xml"
        });
        assert_eq!(doc_to_json(&doc), expected);
        // A replica that never declared its roots (a server) reads the same.
        let server = Doc::new();
        let u = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        server
            .transact_mut()
            .apply_update(Update::decode_v1(&u).unwrap())
            .unwrap();
        let got = doc_to_json(&server);
        assert_eq!(got["t"], json!("héllo"));
        assert_eq!(got["m"], json!({"f": 1.5, "n": 1, "s": "str"}));
        assert_eq!(got["a"], json!([true, "x"]));
    }

    #[test]
    fn a_map_written_under_a_text_root_does_not_replace_the_text() {
        // Honest clients use "t" as text.
        let honest = Doc::with_client_id(1);
        let t = honest.get_or_insert_text("t");
        t.insert(&mut honest.transact_mut(), 0, "hello");
        let sync = |from: &Doc, to: &Doc| {
            let sv = to.transact().state_vector();
            let u = from.transact().encode_state_as_update_v1(&sv);
            to.transact_mut()
                .apply_update(Update::decode_v1(&u).unwrap())
                .unwrap();
        };
        // A hostile client writes a map entry under the same root.
        let hostile = Doc::with_client_id(2);
        sync(&honest, &hostile);
        let m = hostile.get_or_insert_map("t");
        m.insert(&mut hostile.transact_mut(), "k", "v");
        // The server (no declared roots) gets both; the honest client too.
        let server = Doc::new();
        sync(&hostile, &server);
        sync(&hostile, &honest);
        assert_eq!(t.get_string(&honest.transact()), "hello");
        assert_eq!(doc_to_json(&honest), json!({"t": "hello"}));
        assert_eq!(doc_to_json(&server), json!({"t": "hello"}));
        // The map part is still there for a client that reads "t" as a map (yrs
        // reinterprets the root), but the view follows the text.
        let as_map = server.get_or_insert_map("t");
        assert_eq!(as_map.len(&server.transact()), 1);
        // A root holding only map entries is a map.
        let only_map = Doc::new();
        let om = only_map.get_or_insert_map("m");
        om.insert(&mut only_map.transact_mut(), "k", "v");
        let server = Doc::new();
        sync(&only_map, &server);
        assert_eq!(doc_to_json(&server), json!({"m": {"k": "v"}}));
    }
}
