//! Where two states differ, for messages such as "snapshot differs from the replay at
//! `.reservations["r-1"].quantity`: 3 vs 4".

use serde::Serialize;
use serde_json::Value;

/// Rendered values longer than this are cut in messages.
const VALUE_CHARS_MAX: usize = 80;

/// The first place (in document order) where `left` and `right` differ once rendered as JSON,
/// as `path: left vs right`; `None` when their JSON renderings are equal (the states may then
/// still differ in a way JSON does not show, such as float bits).
pub fn first_difference<S: Serialize>(left: &S, right: &S) -> Option<String> {
    match (serde_json::to_value(left), serde_json::to_value(right)) {
        (Ok(l), Ok(r)) => diff_value(&l, &r, String::new()),
        _ => Some("(the state does not render as JSON)".into()),
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= VALUE_CHARS_MAX {
        return text;
    }
    let cut: String = text.chars().take(VALUE_CHARS_MAX).collect();
    format!("{cut}…")
}

fn diff_value(left: &Value, right: &Value, path: String) -> Option<String> {
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => {
            for (key, lv) in l {
                let child = format!("{path}.{key}");
                match r.get(key) {
                    None => return Some(format!("{child}: {} vs (absent)", short(lv))),
                    Some(rv) => {
                        if let Some(found) = diff_value(lv, rv, child) {
                            return Some(found);
                        }
                    }
                }
            }
            r.iter()
                .find(|(key, _)| !l.contains_key(*key))
                .map(|(key, rv)| format!("{path}.{key}: (absent) vs {}", short(rv)))
        }
        (Value::Array(l), Value::Array(r)) => {
            for (i, (lv, rv)) in l.iter().zip(r).enumerate() {
                if let Some(found) = diff_value(lv, rv, format!("{path}[{i}]")) {
                    return Some(found);
                }
            }
            (l.len() != r.len()).then(|| format!("{path}: {} items vs {} items", l.len(), r.len()))
        }
        (l, r) if l == r => None,
        (l, r) => {
            let at = if path.is_empty() {
                "(root)".to_owned()
            } else {
                path
            };
            Some(format!("{at}: {} vs {}", short(l), short(r)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_first_differing_path() {
        let a = json!({"on_hand": 5, "reservations": {"r1": {"quantity": 3}}, "tags": [1, 2]});
        let b = json!({"on_hand": 5, "reservations": {"r1": {"quantity": 4}}, "tags": [1, 2]});
        assert_eq!(
            first_difference(&a, &b).as_deref(),
            Some(".reservations.r1.quantity: 3 vs 4")
        );
        assert_eq!(first_difference(&a, &a), None);
        let c = json!({"on_hand": 5, "reservations": {"r1": {"quantity": 3}}, "tags": [1]});
        assert_eq!(
            first_difference(&a, &c).as_deref(),
            Some(".tags: 2 items vs 1 items")
        );
        assert_eq!(
            first_difference(&json!(1), &json!(2)).as_deref(),
            Some("(root): 1 vs 2")
        );
    }
}
