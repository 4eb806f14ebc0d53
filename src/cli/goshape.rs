//! What Headscale's CLI prints under `-o json|json-line|yaml`: Go's
//! `encoding/json` (or yaml.v3) of its protobuf structs, not the REST
//! API's JSON. Scripts written around `headscale … -o json | jq` read:
//!
//! - JSON: the proto field names (`ip_addresses`, `given_name`), fields in
//!   the proto's order, numeric ids, enums as numbers (`register_method:
//!   1`), timestamps as `{"seconds":N}` (protobuf's Timestamp struct, its
//!   zero `nanos` omitted), and every empty, false or zero field omitted
//!   (`omitempty`); an empty list is `null` (a nil Go slice); indented with
//!   tabs; `<`, `>` and `&` escaped as Go does.
//! - YAML: every field, named by the Go field lowercased (`ipaddresses`),
//!   timestamps as `{seconds, nanos}`, 4-space indents.
//!
//! The input is the REST API's grpc-gateway JSON (the CLI's own client
//! speaks it); [`from_api`] maps it.

use serde_json::Value;

/// An ordered JSON-like tree (Go marshals struct fields in declaration
/// order; serde_json's map here is sorted).
#[derive(Clone, Debug, PartialEq)]
pub enum G {
    Scalar(Value),
    List(Vec<G>),
    Obj(Vec<(String, G)>),
}

const NODE: &[&str] = &[
    "id",
    "machine_key",
    "node_key",
    "disco_key",
    "ip_addresses",
    "name",
    "user",
    "last_seen",
    "expiry",
    "pre_auth_key",
    "created_at",
    "register_method",
    "given_name",
    "online",
    "approved_routes",
    "available_routes",
    "subnet_routes",
    "tags",
];
const USER: &[&str] = &[
    "id",
    "name",
    "created_at",
    "display_name",
    "email",
    "provider_id",
    "provider",
    "profile_pic_url",
];
const PRE_AUTH_KEY: &[&str] = &[
    "user",
    "id",
    "key",
    "reusable",
    "ephemeral",
    "used",
    "expiration",
    "created_at",
    "acl_tags",
];
const API_KEY: &[&str] = &["id", "prefix", "expiration", "created_at", "last_seen"];
const TIMESTAMPS: &[&str] = &[
    "created_at",
    "last_seen",
    "expiry",
    "expiration",
    "updated_at",
];

fn snake(k: &str) -> String {
    // A Go map's key (`{"Result": …}`) is not a proto field name.
    if k.starts_with(|c: char| c.is_ascii_uppercase()) {
        return k.to_string();
    }
    let mut o = String::with_capacity(k.len() + 4);
    for c in k.chars() {
        if c.is_ascii_uppercase() {
            o.push('_');
            o.push(c.to_ascii_lowercase());
        } else {
            o.push(c);
        }
    }
    o
}

/// The proto's field order for an object with these (snake_case) keys.
fn order_of(keys: &[String]) -> Option<&'static [&'static str]> {
    let has = |k: &str| keys.iter().any(|x| x == k);
    if has("machine_key") {
        Some(NODE)
    } else if has("reusable") {
        Some(PRE_AUTH_KEY)
    } else if has("prefix") {
        Some(API_KEY)
    } else if has("provider") || has("display_name") {
        Some(USER)
    } else {
        None
    }
}

fn enum_number(v: &str) -> Option<u64> {
    Some(match v {
        "REGISTER_METHOD_UNSPECIFIED" => 0,
        "REGISTER_METHOD_AUTH_KEY" => 1,
        "REGISTER_METHOD_CLI" => 2,
        "REGISTER_METHOD_OIDC" => 3,
        _ => return None,
    })
}

/// Maps REST API JSON to the Go struct shape; `yaml` keeps empty fields
/// (yaml.v3 has no omitempty on protobuf structs) and names keys by the
/// lowercased Go field name.
pub fn from_api(v: &Value, yaml: bool) -> G {
    match v {
        Value::Array(a) => G::List(a.iter().map(|x| from_api(x, yaml)).collect()),
        Value::Object(m) => {
            let mut fields: Vec<(String, G)> = Vec::new();
            let keys: Vec<String> = m.keys().map(|k| snake(k)).collect();
            let order = order_of(&keys);
            for (k, x) in m {
                let k = snake(k);
                // tinyscale's addition to the REST node; not in the proto.
                if k == "client_version" && order == Some(NODE) {
                    continue;
                }
                let g = if TIMESTAMPS.contains(&k.as_str()) {
                    match x.as_str().and_then(crate::timefmt::parse_rfc3339) {
                        Some(t) => timestamp(t, yaml),
                        None => G::Scalar(Value::Null),
                    }
                } else if k == "id" {
                    match x.as_str().and_then(|s| s.parse::<u64>().ok()) {
                        Some(n) => G::Scalar(n.into()),
                        None => from_api(x, yaml),
                    }
                } else if let Some(n) = x.as_str().and_then(enum_number) {
                    G::Scalar(n.into())
                } else {
                    from_api(x, yaml)
                };
                if !yaml && is_empty(&g) {
                    continue;
                }
                fields.push((k, g));
            }
            if let Some(order) = order {
                fields
                    .sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(usize::MAX));
                if yaml {
                    // Every field of the struct, empty or not.
                    for (i, k) in order.iter().enumerate() {
                        if !fields.iter().any(|(f, _)| f == k) {
                            let empty = if k.ends_with('s') && !TIMESTAMPS.contains(k) {
                                G::List(vec![])
                            } else {
                                G::Scalar(Value::Null)
                            };
                            fields.insert(i.min(fields.len()), (k.to_string(), empty));
                        }
                    }
                }
            }
            if yaml {
                for (k, _) in &mut fields {
                    k.retain(|c| c != '_');
                }
            }
            G::Obj(fields)
        }
        other => G::Scalar(other.clone()),
    }
}

fn timestamp(t: i64, yaml: bool) -> G {
    let mut f = Vec::new();
    if t != 0 || yaml {
        f.push(("seconds".to_string(), G::Scalar(t.into())));
    }
    if yaml {
        f.push(("nanos".to_string(), G::Scalar(0.into())));
    }
    G::Obj(f)
}

/// Go's omitempty: "", false, 0, nil pointer, empty slice.
fn is_empty(g: &G) -> bool {
    match g {
        G::Scalar(Value::Null) | G::Scalar(Value::Bool(false)) => true,
        G::Scalar(Value::String(s)) => s.is_empty(),
        G::Scalar(Value::Number(n)) => n.as_f64() == Some(0.0),
        G::List(l) => l.is_empty(),
        _ => false,
    }
}

/// A top-level empty list is a nil Go slice: `null`.
pub fn top_level(g: G) -> G {
    match g {
        G::List(l) if l.is_empty() => G::Scalar(Value::Null),
        g => g,
    }
}

fn go_string(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_default()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

fn scalar_json(v: &Value) -> String {
    match v {
        Value::String(s) => go_string(s),
        other => other.to_string(),
    }
}

/// `json.MarshalIndent(v, "", "\t")` (indent = Some) or `json.Marshal`.
pub fn json(g: &G, indent: bool) -> String {
    let mut o = String::new();
    emit_json(g, indent, 0, &mut o);
    o
}

fn emit_json(g: &G, indent: bool, depth: usize, o: &mut String) {
    let nl = |o: &mut String, d: usize| {
        if indent {
            o.push('\n');
            for _ in 0..d {
                o.push('\t');
            }
        }
    };
    match g {
        G::Scalar(v) => o.push_str(&scalar_json(v)),
        G::List(l) if l.is_empty() => o.push_str("[]"),
        G::Obj(f) if f.is_empty() => o.push_str("{}"),
        G::List(l) => {
            o.push('[');
            for (i, x) in l.iter().enumerate() {
                if i > 0 {
                    o.push(',');
                }
                nl(o, depth + 1);
                emit_json(x, indent, depth + 1, o);
            }
            nl(o, depth);
            o.push(']');
        }
        G::Obj(f) => {
            o.push('{');
            for (i, (k, x)) in f.iter().enumerate() {
                if i > 0 {
                    o.push(',');
                }
                nl(o, depth + 1);
                o.push_str(&go_string(k));
                o.push(':');
                if indent {
                    o.push(' ');
                }
                emit_json(x, indent, depth + 1, o);
            }
            nl(o, depth);
            o.push('}');
        }
    }
}

/// yaml.v3's `Marshal` (4-space indents, block style).
pub fn yaml(g: &G) -> String {
    let mut o = String::new();
    match g {
        G::Scalar(v) => {
            o.push_str(&yaml_scalar(v));
            o.push('\n');
        }
        _ => emit_yaml(g, 0, &mut o),
    }
    o
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => {
            let plain = !s.is_empty()
                && !s.starts_with(|c: char| " -?:,[]{}#&*!|>'\"%@`".contains(c))
                && !s.ends_with(' ')
                && !s.contains(": ")
                && !s.contains(" #")
                && !matches!(
                    s.to_ascii_lowercase().as_str(),
                    "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
                )
                && s.parse::<f64>().is_err()
                && !s.contains('\n');
            if plain {
                s.clone()
            } else {
                serde_json::to_string(s).unwrap_or_default()
            }
        }
        other => other.to_string(),
    }
}

fn emit_yaml(g: &G, depth: usize, o: &mut String) {
    let pad = "    ".repeat(depth);
    match g {
        G::Obj(f) => {
            for (k, x) in f {
                match x {
                    G::Scalar(v) => o.push_str(&format!("{pad}{k}: {}\n", yaml_scalar(v))),
                    G::List(l) if l.is_empty() => o.push_str(&format!("{pad}{k}: []\n")),
                    G::Obj(m) if m.is_empty() => o.push_str(&format!("{pad}{k}: {{}}\n")),
                    _ => {
                        o.push_str(&format!("{pad}{k}:\n"));
                        emit_yaml(x, depth + 1, o);
                    }
                }
            }
        }
        G::List(l) => {
            for x in l {
                match x {
                    G::Scalar(v) => o.push_str(&format!("{pad}- {}\n", yaml_scalar(v))),
                    _ => {
                        // The item's first line follows the dash; the rest
                        // align under it.
                        let mut inner = String::new();
                        emit_yaml(x, depth + 1, &mut inner);
                        let inner_pad = "    ".repeat(depth + 1);
                        for (i, line) in inner.lines().enumerate() {
                            let line = line.strip_prefix(&inner_pad).unwrap_or(line);
                            if i == 0 {
                                o.push_str(&format!("{pad}- {line}\n"));
                            } else {
                                o.push_str(&format!("{pad}  {line}\n"));
                            }
                        }
                    }
                }
            }
        }
        G::Scalar(v) => o.push_str(&format!("{pad}{}\n", yaml_scalar(v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_as_go_marshals_it() {
        let api = json!({
            "id": "7", "machineKey": "mkey:aa", "nodeKey": "nodekey:bb", "discoKey": "",
            "ipAddresses": ["100.64.0.1"], "name": "h", "user": {"id": "1", "name": "alice",
            "createdAt": "2026-01-01T00:00:00Z", "displayName": "", "email": "", "providerId": "",
            "provider": "", "profilePicUrl": ""}, "lastSeen": null, "expiry": null,
            "preAuthKey": null, "createdAt": "2026-01-02T00:00:00Z",
            "registerMethod": "REGISTER_METHOD_AUTH_KEY", "givenName": "h", "online": false,
            "approvedRoutes": [], "availableRoutes": [], "subnetRoutes": [], "tags": ["tag:a"],
            "clientVersion": "1.90"
        });
        let g = from_api(&api, false);
        assert_eq!(
            json(&g, false),
            r#"{"id":7,"machine_key":"mkey:aa","node_key":"nodekey:bb","ip_addresses":["100.64.0.1"],"name":"h","user":{"id":1,"name":"alice","created_at":{"seconds":1767225600}},"created_at":{"seconds":1767312000},"register_method":1,"given_name":"h","tags":["tag:a"]}"#
        );
        assert!(json(&g, true).starts_with("{\n\t\"id\": 7,\n\t\"machine_key\": \"mkey:aa\","));
        assert_eq!(json(&top_level(from_api(&json!([]), false)), true), "null");
        assert_eq!(json(&G::Scalar(json!("a<b")), false), "\"a\\u003cb\"");
        let y = yaml(&from_api(&api, true));
        assert!(y.starts_with("id: 7\nmachinekey: mkey:aa\nnodekey: nodekey:bb\ndiscokey: \"\"\nipaddresses:\n    - 100.64.0.1\n"), "{y}");
        assert!(y.contains("lastseen: null\n"), "{y}");
        assert!(
            y.contains("createdat:\n    seconds: 1767312000\n    nanos: 0\n"),
            "{y}"
        );
        assert!(y.contains("approvedroutes: []\n"), "{y}");
        assert!(!y.contains("clientversion"), "{y}");
        let l = yaml(&from_api(
            &json!([{"id": "1", "name": "a", "provider": ""}]),
            true,
        ));
        assert!(l.starts_with("- id: 1\n  name: a\n"), "{l}");
    }
}
