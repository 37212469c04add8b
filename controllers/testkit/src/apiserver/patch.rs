//! Patch semantics: JSON merge patch (RFC 7386), JSON patch (RFC 6902, including `test`), and a
//! simplified server-side apply.
//!
//! Server-side apply here: each field manager's applied configuration is remembered as a set of
//! leaf paths. Applying again merges the new configuration into the object (maps merged, lists
//! replaced whole) and removes the leaves this manager applied before but no longer does, unless
//! another manager applied them too. A leaf another manager applied with a different value is a
//! conflict (409) unless `force=true`, which takes it over. Lists are atomic (no
//! `x-kubernetes-list-map-keys` merging) — see APISERVER-GAPS.md.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::errors::{ApiError, ApiResult};

pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("just made an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn parse_pointer(ptr: &str) -> ApiResult<Vec<String>> {
    if ptr.is_empty() {
        return Ok(vec![]);
    }
    let rest =
        ptr.strip_prefix('/').ok_or_else(|| ApiError::new(422, "Invalid", format!("invalid JSON pointer {ptr:?}")))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn get_mut<'a>(root: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = root;
    for p in path {
        cur = match cur {
            Value::Object(m) => m.get_mut(p)?,
            Value::Array(a) => a.get_mut(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn remove_at(root: &mut Value, path: &[String]) -> ApiResult<Value> {
    let (last, parent) = path.split_last().ok_or_else(|| invalid_patch("cannot remove the root"))?;
    let parent =
        get_mut(root, parent).ok_or_else(|| invalid_patch(&format!("path /{} does not exist", path.join("/"))))?;
    match parent {
        Value::Object(m) => {
            m.remove(last).ok_or_else(|| invalid_patch(&format!("path /{} does not exist", path.join("/"))))
        }
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| invalid_patch("bad array index"))?;
            if i < a.len() { Ok(a.remove(i)) } else { Err(invalid_patch("array index out of range")) }
        }
        _ => Err(invalid_patch("parent is not a container")),
    }
}

fn add_at(root: &mut Value, path: &[String], value: Value) -> ApiResult<()> {
    let Some((last, parent)) = path.split_last() else {
        *root = value;
        return Ok(());
    };
    let parent =
        get_mut(root, parent).ok_or_else(|| invalid_patch(&format!("path /{} does not exist", parent.join("/"))))?;
    match parent {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| invalid_patch("bad array index"))?;
            if i > a.len() {
                return Err(invalid_patch("array index out of range"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(invalid_patch("parent is not a container")),
    }
}

fn invalid_patch(why: &str) -> ApiError {
    ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {why}"))
}

/// Applies an RFC 6902 patch. A failed `test` is a 422, as on the real server.
pub fn json_patch(target: &mut Value, ops: &Value) -> ApiResult<()> {
    let ops = ops.as_array().ok_or_else(|| ApiError::bad_request("a JSON patch is an array of operations"))?;
    for op in ops {
        let kind = op["op"].as_str().unwrap_or_default();
        let path = parse_pointer(op["path"].as_str().unwrap_or_default())?;
        match kind {
            "add" => add_at(target, &path, op["value"].clone())?,
            "remove" => {
                remove_at(target, &path)?;
            }
            "replace" => {
                let slot = get_mut(target, &path)
                    .ok_or_else(|| invalid_patch(&format!("replace: path {} does not exist", op["path"])))?;
                *slot = op["value"].clone();
            }
            "test" => {
                // An absent path tests equal to null, as the API server's implementation does.
                let actual = get_mut(target, &path).map(|v| v.clone()).unwrap_or(Value::Null);
                if actual != op["value"] {
                    return Err(invalid_patch(&format!("testing value {} failed", op["path"])));
                }
            }
            "move" => {
                let from = parse_pointer(op["from"].as_str().unwrap_or_default())?;
                let v = remove_at(target, &from)?;
                add_at(target, &path, v)?;
            }
            "copy" => {
                let from = parse_pointer(op["from"].as_str().unwrap_or_default())?;
                let v = get_mut(target, &from).ok_or_else(|| invalid_patch("copy: from does not exist"))?.clone();
                add_at(target, &path, v)?;
            }
            other => return Err(ApiError::bad_request(format!("unknown JSON patch op {other:?}"))),
        }
    }
    Ok(())
}

/// Leaf paths of an applied configuration (objects descend, everything else is a leaf).
pub fn leaf_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                leaf_paths(child, &format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// The value at a leaf path, if present.
pub fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(v);
    }
    v.pointer(path)
}

/// Removes a leaf path (and parents it leaves empty).
pub fn remove_leaf(v: &mut Value, path: &str) {
    let parts: Vec<String> = path.trim_start_matches('/').split('/').map(unescape).collect();
    fn rec(v: &mut Value, parts: &[String]) -> bool {
        let Some(obj) = v.as_object_mut() else { return false };
        match parts {
            [] => false,
            [last] => {
                obj.remove(last);
                obj.is_empty()
            }
            [first, rest @ ..] => {
                let now_empty = obj.get_mut(first).is_some_and(|child| rec(child, rest));
                if now_empty {
                    obj.remove(first);
                }
                obj.is_empty()
            }
        }
    }
    rec(v, &parts);
}

/// Deep merge for apply: maps merge, everything else (lists included) is replaced.
pub fn apply_merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => apply_merge(existing, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn json_patch_ops_and_test() {
        let mut t = json!({"metadata": {"finalizers": ["a"]}, "l": [1, 2, 3]});
        json_patch(
            &mut t,
            &json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["a"]},
                {"op": "add", "path": "/metadata/finalizers/-", "value": "b"},
                {"op": "remove", "path": "/l/0"},
                {"op": "replace", "path": "/l/0", "value": 9},
                {"op": "test", "path": "/metadata/absent", "value": null},
                {"op": "copy", "from": "/l", "path": "/m"},
                {"op": "move", "from": "/m", "path": "/n"}
            ]),
        )
        .unwrap();
        assert_eq!(t, json!({"metadata": {"finalizers": ["a", "b"]}, "l": [9, 3], "n": [9, 3]}));
        let err = json_patch(&mut t, &json!([{"op": "test", "path": "/l/0", "value": 1}])).unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
    }

    #[test]
    fn leaves_and_removal() {
        let mut s = BTreeSet::new();
        leaf_paths(&json!({"spec": {"a": 1, "b": {"c": [1]}}, "x/y": 2}), "", &mut s);
        assert_eq!(s.into_iter().collect::<Vec<_>>(), vec!["/spec/a", "/spec/b/c", "/x~1y"]);
        let mut v = json!({"spec": {"b": {"c": 1}, "a": 1}});
        remove_leaf(&mut v, "/spec/b/c");
        assert_eq!(v, json!({"spec": {"a": 1}}));
    }
}
