//! JSON output of the tooling (`diff --json`, `check --json`, `stats
//! --json`) through serde_json, and the one way a path is written there.
//!
//! A path is a JSON string `"path"` when its bytes are UTF-8. A file name
//! on Linux is any bytes, so otherwise `"path"` holds the path with each
//! invalid sequence replaced by U+FFFD (for people), and `"path_bytes"`
//! holds its exact bytes as an array of numbers 0-255 (for programs):
//! `{"path":"/caf\ufffd","path_bytes":[47,99,97,102,233]}`. A field
//! `"path_bytes"` is present only then.

use std::borrow::Cow;

use serde::Serialize;

/// A path inside a JSON object; flatten it into the object
/// (`#[serde(flatten)]`) to get `"path"` and, when needed, `"path_bytes"`.
#[derive(Debug, Serialize)]
pub(crate) struct JsonPath<'a> {
    path: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_bytes: Option<&'a [u8]>,
}

impl<'a> JsonPath<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(s) => JsonPath {
                path: Cow::Borrowed(s),
                path_bytes: None,
            },
            Err(_) => JsonPath {
                path: String::from_utf8_lossy(bytes),
                path_bytes: Some(bytes),
            },
        }
    }
}

/// `items` as one JSON array on one line, newline-terminated.
pub(crate) fn array_line<T: Serialize>(items: &[T]) -> serde_json::Result<String> {
    let mut s = serde_json::to_string(items)?;
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Item<'a> {
        kind: &'a str,
        #[serde(flatten)]
        path: JsonPath<'a>,
    }

    #[test]
    fn paths_round_trip() {
        let utf8 = Item {
            kind: "A",
            path: JsonPath::new("/a \"b\"\n\u{e9}".as_bytes()),
        };
        assert_eq!(
            array_line(&[utf8]).unwrap(),
            "[{\"kind\":\"A\",\"path\":\"/a \\\"b\\\"\\n\u{e9}\"}]\n"
        );
        let raw: &[u8] = b"/caf\xe9";
        let line = array_line(&[Item {
            kind: "D",
            path: JsonPath::new(raw),
        }])
        .unwrap();
        assert_eq!(
            line,
            "[{\"kind\":\"D\",\"path\":\"/caf\u{fffd}\",\"path_bytes\":[47,99,97,102,233]}]\n"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let bytes: Vec<u8> = v[0]["path_bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(bytes, raw);
    }
}
