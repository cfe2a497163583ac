//! Bundled plugin `cache-invalidate`: deletes cache keys when documents change.
//!
//! Each configured rule maps a namespace (and optionally operation types) to key
//! templates such as `model:{_id}` or `user:{uuid}:profile`; the keys of every
//! matching rule go out as one cache delete per event. Only the fields a template
//! names are read from the event, in place.

use oplet_sdk::{ChangeView, Effect, Error, EventView, LogLevel, OperationType, Plugin, RawValue, Result};
use serde::Deserialize;

oplet_sdk::export_plugin!(CacheInvalidate);

/// The manifest's `[config]`: `[[config.rules]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `db.coll`, `db.*` or `*`.
    pub namespace: String,
    /// Operation types this rule applies to; empty means all.
    #[serde(default)]
    pub operations: Vec<String>,
    pub keys: Vec<String>,
}

pub struct CacheInvalidate {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub namespace: String,
    /// Operation type names, normalized; empty means all.
    pub operations: Vec<String>,
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

impl Plugin for CacheInvalidate {
    type Config = Config;

    fn new(config: Config) -> Result<Self> {
        let rules = config.rules.iter().enumerate().map(|(i, r)| Rule::new(i, r)).collect::<Result<Vec<_>>>()?;
        if rules.is_empty() {
            oplet_sdk::log(LogLevel::Warn, "cache-invalidate has no [[config.rules]]: it will delete nothing");
        }
        Ok(CacheInvalidate { rules })
    }

    /// One cache delete with every key of every matching rule (deduplicated, in
    /// rule order), then a warning for each key that could not be built.
    fn handle(&mut self, event: &EventView) -> Result<Vec<Effect>> {
        let Some(change) = event.change() else { return Ok(vec![]) };
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
                            change.op(),
                            change.namespace(),
                            event.id(),
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
        Ok(effects)
    }
}

fn hint(change: &ChangeView) -> &'static str {
    match (change.op(), &change.full_document()) {
        ("update", None) => " (no full document: set fullDocument \"updateLookup\" on the watch)",
        ("delete", _) if change.before().is_none() => " (a delete carries only _id unless pre-images are enabled)",
        _ => "",
    }
}

impl Rule {
    fn new(i: usize, rule: &RuleConfig) -> Result<Rule> {
        let at = |key: &str| format!("config.rules[{i}].{key}");
        let namespace = &rule.namespace;
        if namespace != "*" && !namespace.contains('.') {
            return Err(Error::new(format!("{} {namespace:?} must be \"db.coll\", \"db.*\" or \"*\"", at("namespace"))));
        }
        if rule.keys.is_empty() {
            return Err(Error::new(format!("{} must be a non-empty list of key templates", at("keys"))));
        }
        let keys = rule
            .keys
            .iter()
            .map(|k| Template::parse(k).map_err(|e| Error::new(format!("{}: {e}", at("keys")))))
            .collect::<Result<_>>()?;
        Ok(Rule {
            namespace: namespace.clone(),
            operations: rule.operations.iter().map(|o| OperationType::parse(o).as_str().to_string()).collect(),
            keys,
        })
    }

    pub fn applies_to(&self, change: &ChangeView) -> bool {
        change.in_namespace(&self.namespace) && (self.operations.is_empty() || self.operations.iter().any(|o| o == change.op()))
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
    pub fn render(&self, change: &ChangeView) -> std::result::Result<String, String> {
        let mut key = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => key.push_str(t),
                Part::Field(f) => match lookup(change, f) {
                    Some(v) => match v.as_str() {
                        Some(s) => key.push_str(s),
                        None => key.push_str(&v.to_key_string()),
                    },
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
fn lookup<'a>(change: &ChangeView<'a>, field: &str) -> Option<RawValue<'a>> {
    let found = if field == "_id" {
        change.id()
    } else {
        change.field(field).or_else(|| change.before().and_then(|b| b.get(field)))
    };
    found.filter(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::{Change, Event, EventBody, Map, Value};

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    fn oid(hex: &str) -> Value {
        map(&[("$oid", hex.into())])
    }

    fn config() -> CacheInvalidate {
        let rule = |ns: &str, ops: &[&str], keys: &[&str]| {
            let mut r = vec![("namespace", Value::from(ns)), ("keys", Value::from(keys.to_vec()))];
            if !ops.is_empty() {
                r.push(("operations", Value::from(ops.to_vec())));
            }
            map(&r)
        };
        CacheInvalidate::from_config(&map(&[(
            "rules",
            Value::Array(vec![
                rule("app.models", &[], &["model:{_id}"]),
                rule("app.users", &["update", "replace"], &["user:{uuid}:profile", "user:{_id}"]),
                rule("app.*", &["delete"], &["any:{_id}", "model:{_id}"]),
            ]),
        )]))
        .unwrap()
    }

    fn run(e: &Event) -> Vec<Effect> {
        config().handle_event(e).unwrap()
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
        let effects = run(&event(OperationType::Insert, "models", None, None));
        assert_eq!(effects, vec![Effect::cache_delete(["model:65a1f0c2e4b0a1b2c3d4e5f6"])]);
    }

    #[test]
    fn fields_come_from_the_full_document_or_the_updated_fields() {
        let full = map(&[("uuid", "u-7".into())]);
        let effects = run(&event(OperationType::Replace, "users", Some(full), None));
        assert_eq!(effects, vec![Effect::cache_delete(["user:u-7:profile", "user:65a1f0c2e4b0a1b2c3d4e5f6"])]);

        let updated: Map = [("uuid".to_string(), Value::from("u-8"))].into_iter().collect();
        let effects = run(&event(OperationType::Update, "users", None, Some(updated)));
        assert_eq!(effects[0], Effect::cache_delete(["user:u-8:profile", "user:65a1f0c2e4b0a1b2c3d4e5f6"]));
    }

    #[test]
    fn a_key_with_a_missing_field_is_skipped_with_a_warning_naming_template_and_field() {
        let effects = run(&event(OperationType::Update, "users", None, Some(Map::new())));
        assert_eq!(effects[0], Effect::cache_delete(["user:65a1f0c2e4b0a1b2c3d4e5f6"]));
        let Effect::Log { level, message } = &effects[1] else { panic!("{effects:?}") };
        assert_eq!(*level, LogLevel::Warn);
        assert!(message.contains("\"user:{uuid}:profile\"") && message.contains("field \"uuid\""), "{message}");
        assert!(message.contains("updateLookup"), "{message}");
    }

    #[test]
    fn operations_filter_rules_and_keys_of_all_matching_rules_are_deduplicated() {
        let effects = run(&event(OperationType::Delete, "models", None, None));
        let id = "65a1f0c2e4b0a1b2c3d4e5f6";
        assert_eq!(effects, vec![Effect::cache_delete([format!("model:{id}"), format!("any:{id}")])]);
        assert_eq!(run(&event(OperationType::Insert, "users", None, None)), vec![]);
        assert_eq!(run(&event(OperationType::Insert, "other", None, None)), vec![]);
    }

    #[test]
    fn templates_with_nested_paths_parse_and_bad_ones_are_refused() {
        let t = Template::parse("org:{org.id}:user:{_id}").unwrap();
        let full = map(&[("org", map(&[("id", Value::Int(42))]))]);
        let e = event(OperationType::Insert, "x", Some(full), None);
        let bytes = oplet_sdk::codec::encode(&e).unwrap();
        let view = EventView::parse(&bytes).unwrap();
        assert_eq!(t.render(view.change().unwrap()), Ok("org:42:user:65a1f0c2e4b0a1b2c3d4e5f6".into()));
        assert!(Template::parse("user:{uuid").is_err());
        assert!(Template::parse("user:{}").is_err());
        assert!(Template::parse("user:}x").is_err());
    }

    #[test]
    fn a_config_mistake_names_the_key() {
        let bad = map(&[("rules", Value::Array(vec![map(&[("namespace", "app.users".into())])]))]);
        let err = CacheInvalidate::from_config(&bad).err().unwrap().to_string();
        assert!(err.contains("config.rules[0].keys"), "{err}");
        let bad = map(&[(
            "rules",
            Value::Array(vec![map(&[("namespace", "users".into()), ("keys", Value::from(vec!["k"]))])]),
        )]);
        assert!(CacheInvalidate::from_config(&bad).err().unwrap().to_string().contains("config.rules[0].namespace"));
        let typo = map(&[("rules", Value::Array(vec![map(&[("namespace", "a.b".into()), ("key", Value::from(vec!["k"]))])]))]);
        let err = CacheInvalidate::from_config(&typo).err().unwrap().to_string();
        assert!(err.starts_with("config.rules[0].key: is not a known key"), "{err}");
    }
}
