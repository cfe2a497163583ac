//! Bundled plugin `cache-invalidate`: deletes cache keys when documents change.
//!
//! Each configured rule maps a namespace (and optionally operation types) to key
//! templates such as `model:{_id}` or `user:{uuid}:profile`; the keys of every
//! matching rule go out as one cache delete per event.

use oplet_sdk::{handler, init, namespace_matches, Change, Effect, Error, Event, EventBody, LogLevel, OperationType, Result, Value};
use std::cell::RefCell;

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

#[init]
pub fn setup(config: &Value) -> Result<()> {
    let config = Config::from_value(config)?;
    if config.rules.is_empty() {
        oplet_sdk::log(LogLevel::Warn, "cache-invalidate has no [[config.rules]]: it will delete nothing");
    }
    CONFIG.with(|c| *c.borrow_mut() = config);
    Ok(())
}

#[handler]
pub fn handle(event: &Event) -> Result<Vec<Effect>> {
    Ok(CONFIG.with(|c| c.borrow().effects(event)))
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// `db.coll`, `db.*` or `*`.
    pub namespace: String,
    /// Operation types this rule applies to; empty means all.
    pub operations: Vec<OperationType>,
    pub keys: Vec<Template>,
}

/// A key template: literal text with `{field.path}` placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(String),
}

impl Config {
    pub fn from_value(config: &Value) -> Result<Config> {
        let rules = match config.get("rules") {
            None | Some(Value::Null) => return Ok(Config::default()),
            Some(Value::Array(rules)) => rules,
            Some(_) => return Err(Error::new("config.rules must be a list of [[config.rules]] tables")),
        };
        let rules = rules.iter().enumerate().map(|(i, r)| Rule::from_value(i, r)).collect::<Result<_>>()?;
        Ok(Config { rules })
    }

    /// One cache delete with every key of every matching rule (deduplicated, in
    /// rule order), then a warning for each key that could not be built.
    pub fn effects(&self, event: &Event) -> Vec<Effect> {
        let EventBody::Change(change) = &event.body else { return vec![] };
        let mut keys: Vec<String> = Vec::new();
        let mut warnings = Vec::new();
        for rule in self.rules.iter().filter(|r| r.applies_to(change)) {
            for template in &rule.keys {
                match template.render(change) {
                    Ok(key) if !keys.contains(&key) => keys.push(key),
                    Ok(_) => {}
                    Err(field) => warnings.push(Effect::Log {
                        level: LogLevel::Warn,
                        message: format!(
                            "cache-invalidate: skipped key template {:?} for {} {} (event {}): field {field:?} is not in the change{}",
                            template.text,
                            change.op,
                            change.namespace(),
                            event.id,
                            hint(change),
                        ),
                    }),
                }
            }
        }
        let mut effects = Vec::with_capacity(1 + warnings.len());
        if !keys.is_empty() {
            effects.push(Effect::CacheDelete { keys });
        }
        effects.extend(warnings);
        effects
    }
}

fn hint(change: &Change) -> &'static str {
    match (&change.op, &change.full_document) {
        (OperationType::Update, None) => " (no full document: set fullDocument \"updateLookup\" on the watch)",
        (OperationType::Delete, _) if change.before.is_none() => {
            " (a delete carries only _id unless pre-images are enabled)"
        }
        _ => "",
    }
}

impl Rule {
    fn from_value(i: usize, rule: &Value) -> Result<Rule> {
        let at = |key: &str| format!("config.rules[{i}].{key}");
        let namespace = rule
            .get("namespace")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::new(format!("{} must be a string like \"db.coll\" or \"db.*\"", at("namespace"))))?;
        if namespace != "*" && !namespace.contains('.') {
            return Err(Error::new(format!(
                "{} {namespace:?} must be \"db.coll\", \"db.*\" or \"*\"",
                at("namespace")
            )));
        }
        let operations = match rule.get("operations") {
            None => vec![],
            Some(v) => {
                strings(v).ok_or_else(|| Error::new(format!("{} must be a list of strings", at("operations"))))?
            }
        };
        let keys = rule
            .get("keys")
            .and_then(strings)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| Error::new(format!("{} must be a non-empty list of key templates", at("keys"))))?;
        let keys = keys
            .iter()
            .map(|k| Template::parse(k).map_err(|e| Error::new(format!("{}: {e}", at("keys")))))
            .collect::<Result<_>>()?;
        Ok(Rule {
            namespace: namespace.to_string(),
            operations: operations.iter().map(|o| OperationType::parse(o)).collect(),
            keys,
        })
    }

    pub fn applies_to(&self, change: &Change) -> bool {
        namespace_matches(&self.namespace, &change.db, &change.coll)
            && (self.operations.is_empty() || self.operations.contains(&change.op))
    }
}

impl Template {
    pub fn parse(text: &str) -> std::result::Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or_else(|| format!("template {text:?} has a '{{' without '}}'"))?;
            let field = rest[open + 1..open + close].trim();
            if field.is_empty() || field.contains('{') {
                return Err(format!("template {text:?} has an empty or nested placeholder"));
            }
            parts.push(Part::Field(field.to_string()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("template {text:?} has a '}}' without '{{'"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { text: text.to_string(), parts })
    }

    /// The key for this change, or the name of the first field it lacks.
    pub fn render(&self, change: &Change) -> std::result::Result<String, String> {
        let mut key = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => key.push_str(t),
                Part::Field(f) => match lookup(change, f) {
                    Some(v) => key.push_str(&v.to_key_string()),
                    None => return Err(f.clone()),
                },
            }
        }
        Ok(key)
    }
}

/// `{_id}` is the document key's `_id`; any other field comes from the document
/// after the change, then the updated fields, then the pre-image (for deletes).
/// A null counts as missing: a key like `user:null` would never be the real one.
fn lookup<'a>(change: &'a Change, field: &str) -> Option<&'a Value> {
    let found = if field == "_id" {
        change.id()
    } else {
        change.field(field).or_else(|| change.before.as_ref().and_then(|b| b.get_path(field)))
    };
    found.filter(|v| !v.is_null())
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()?.iter().map(|s| s.as_str().map(str::to_string)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::Map;

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    fn oid(hex: &str) -> Value {
        map(&[("$oid", hex.into())])
    }

    fn config() -> Config {
        let rule = |ns: &str, ops: &[&str], keys: &[&str]| {
            let mut r = vec![("namespace", Value::from(ns)), ("keys", Value::from(keys.to_vec()))];
            if !ops.is_empty() {
                r.push(("operations", Value::from(ops.to_vec())));
            }
            map(&r)
        };
        Config::from_value(&map(&[(
            "rules",
            Value::Array(vec![
                rule("app.models", &[], &["model:{_id}"]),
                rule("app.users", &["update", "replace"], &["user:{uuid}:profile", "user:{_id}"]),
                rule("app.*", &["delete"], &["any:{_id}", "model:{_id}"]),
            ]),
        )]))
        .unwrap()
    }

    fn event(op: OperationType, coll: &str, full: Option<Value>, updated: Option<Map>) -> Event {
        let change = Change {
            op,
            db: "app".into(),
            coll: coll.into(),
            key: map(&[("_id", oid("65a1f0c2e4b0a1b2c3d4e5f6"))]),
            full_document: full,
            updated_fields: updated,
            ..Default::default()
        };
        Event { seq: 1, id: "tok-1".into(), source: "mongo".into(), time_ms: 0, body: EventBody::Change(change) }
    }

    #[test]
    fn an_object_id_fills_the_key_as_its_hex() {
        let effects = config().effects(&event(OperationType::Insert, "models", None, None));
        assert_eq!(effects, vec![Effect::cache_delete(["model:65a1f0c2e4b0a1b2c3d4e5f6"])]);
    }

    #[test]
    fn fields_come_from_the_full_document_or_the_updated_fields() {
        let full = map(&[("uuid", "u-7".into())]);
        let effects = config().effects(&event(OperationType::Replace, "users", Some(full), None));
        assert_eq!(effects, vec![Effect::cache_delete(["user:u-7:profile", "user:65a1f0c2e4b0a1b2c3d4e5f6"])]);

        let updated: Map = [("uuid".to_string(), Value::from("u-8"))].into_iter().collect();
        let effects = config().effects(&event(OperationType::Update, "users", None, Some(updated)));
        assert_eq!(effects[0], Effect::cache_delete(["user:u-8:profile", "user:65a1f0c2e4b0a1b2c3d4e5f6"]));
    }

    #[test]
    fn a_key_with_a_missing_field_is_skipped_with_a_warning_naming_template_and_field() {
        let effects = config().effects(&event(OperationType::Update, "users", None, Some(Map::new())));
        assert_eq!(effects[0], Effect::cache_delete(["user:65a1f0c2e4b0a1b2c3d4e5f6"]));
        let Effect::Log { level, message } = &effects[1] else { panic!("{effects:?}") };
        assert_eq!(*level, LogLevel::Warn);
        assert!(message.contains("\"user:{uuid}:profile\"") && message.contains("field \"uuid\""), "{message}");
        assert!(message.contains("updateLookup"), "{message}");
    }

    #[test]
    fn operations_filter_rules_and_keys_of_all_matching_rules_are_deduplicated() {
        let effects = config().effects(&event(OperationType::Delete, "models", None, None));
        let id = "65a1f0c2e4b0a1b2c3d4e5f6";
        assert_eq!(effects, vec![Effect::cache_delete([format!("model:{id}"), format!("any:{id}")])]);
        assert_eq!(config().effects(&event(OperationType::Insert, "users", None, None)), vec![]);
        assert_eq!(config().effects(&event(OperationType::Insert, "other", None, None)), vec![]);
    }

    #[test]
    fn templates_with_nested_paths_parse_and_bad_ones_are_refused() {
        let t = Template::parse("org:{org.id}:user:{_id}").unwrap();
        let full = map(&[("org", map(&[("id", Value::Int(42))]))]);
        let e = event(OperationType::Insert, "x", Some(full), None);
        let EventBody::Change(change) = &e.body else { unreachable!() };
        assert_eq!(t.render(change), Ok("org:42:user:65a1f0c2e4b0a1b2c3d4e5f6".into()));
        assert!(Template::parse("user:{uuid").is_err());
        assert!(Template::parse("user:{}").is_err());
        assert!(Template::parse("user:}x").is_err());
    }

    #[test]
    fn a_config_mistake_names_the_key() {
        let bad = map(&[("rules", Value::Array(vec![map(&[("namespace", "app.users".into())])]))]);
        let err = Config::from_value(&bad).unwrap_err().to_string();
        assert!(err.contains("config.rules[0].keys"), "{err}");
        let bad = map(&[(
            "rules",
            Value::Array(vec![map(&[("namespace", "users".into()), ("keys", Value::from(vec!["k"]))])]),
        )]);
        assert!(Config::from_value(&bad).unwrap_err().to_string().contains("config.rules[0].namespace"));
    }
}
