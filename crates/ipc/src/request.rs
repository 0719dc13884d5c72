//! The read-only request handed to routes and event handlers.

use serde_json::{Map, Value};

/// A request as seen by a route: endpoint, headers and the `data` items. Read-only.
///
/// ```
/// use nimbus_ipc::Request;
/// use serde_json::json;
/// let r = Request::new("stats", json!({"guild": 1}).as_object().unwrap().clone(), Default::default());
/// assert_eq!(r.get("guild"), Some(&json!(1)));
/// assert_eq!(r.keys().collect::<Vec<_>>(), ["guild"]);
/// for key in &r { assert_eq!(key, "guild"); }
/// ```
#[derive(Clone)]
pub struct Request {
    endpoint: String,
    data: Map<String, Value>,
    headers: Map<String, Value>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the Authorization value.
        let headers: Vec<_> = self.headers.keys().collect();
        f.debug_struct("Request")
            .field("endpoint", &self.endpoint)
            .field("data", &self.data)
            .field("header_names", &headers)
            .finish()
    }
}

impl Request {
    /// Build a request (mostly for tests of route functions).
    pub fn new(
        endpoint: impl Into<String>,
        data: Map<String, Value>,
        headers: Map<String, Value>,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            data,
            headers,
        }
    }
    /// The endpoint as the client sent it (empty when missing).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
    /// The request headers (including `Authorization`: do not log them).
    pub fn headers(&self) -> &Map<String, Value> {
        &self.headers
    }
    /// One data item.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.data.get(key)
    }
    /// The data keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.data.keys().map(String::as_str)
    }
    /// The data values.
    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.data.values()
    }
    /// The data `(key, value)` pairs.
    pub fn items(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.data.iter().map(|(k, v)| (k.as_str(), v))
    }
    /// All data as a map.
    pub fn data(&self) -> &Map<String, Value> {
        &self.data
    }
}

impl<'a> IntoIterator for &'a Request {
    type Item = &'a str;
    type IntoIter = std::iter::Map<serde_json::map::Keys<'a>, fn(&'a String) -> &'a str>;
    fn into_iter(self) -> Self::IntoIter {
        self.data
            .keys()
            .map(String::as_str as fn(&'a String) -> &'a str)
    }
}
