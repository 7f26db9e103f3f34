//! The Logstash pipeline (`logstash/pipeline/mapcast.conf`), parsed with the
//! grammar of Logstash's configuration language (sections, plugins,
//! `key => value` settings, conditionals) and checked: balanced braces,
//! known plugins with unique ids, and data-stream routing to exactly the
//! streams mapcast's own shipper writes.

use std::collections::BTreeSet;

use mapcast::telemetry::elastic::{Indices, Stream};
use serde_json::Value;

use super::{assert_reports, read, repo};

const PLUGINS: &[(&str, &[&str])] = &[
    ("input", &["tcp", "file", "beats", "stdin"]),
    ("filter", &["mutate", "fingerprint", "json", "date", "drop"]),
    ("output", &["elasticsearch", "stdout"]),
];

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Punct(&'static str),
}

#[derive(Debug, Clone)]
enum Setting {
    Scalar(String),
    List(Vec<Setting>),
    Hash(Vec<(String, Setting)>),
}

#[derive(Debug)]
struct Plugin {
    section: String,
    name: String,
    settings: Vec<(String, Setting)>,
}

/// Tokens of a pipeline file; comments dropped, brace balance checked.
fn tokenize(text: &str, errors: &mut Vec<String>) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut depth: Vec<char> = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' => while chars.next_if(|c| *c != '\n').is_some() {},
            '"' | '\'' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('\\') => s.extend(chars.next()),
                        Some(q) if q == c => break,
                        Some(other) => s.push(other),
                        None => {
                            errors.push("unterminated string".into());
                            break;
                        }
                    }
                }
                tokens.push(Token::Str(s));
            }
            '{' | '[' => {
                depth.push(c);
                tokens.push(Token::Punct(if c == '{' { "{" } else { "[" }));
            }
            '}' | ']' => {
                let open = if c == '}' { '{' } else { '[' };
                if depth.pop() != Some(open) {
                    errors.push(format!("unbalanced {c}"));
                }
                tokens.push(Token::Punct(if c == '}' { "}" } else { "]" }));
            }
            '=' if chars.peek() == Some(&'>') => {
                chars.next();
                tokens.push(Token::Punct("=>"));
            }
            ',' => tokens.push(Token::Punct(",")),
            c if c.is_whitespace() => {}
            c => {
                let mut word = c.to_string();
                while let Some(n) =
                    chars.next_if(|n| !n.is_whitespace() && !"{}[],#\"'".contains(*n))
                {
                    word.push(n);
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    if !depth.is_empty() {
        errors.push(format!("unbalanced: {} unclosed", depth.len()));
    }
    tokens
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    plugins: Vec<Plugin>,
    errors: Vec<String>,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn peek_is(&self, p: &str) -> bool {
        self.tokens.get(self.at)
            == Some(&Token::Punct(match p {
                "{" => "{",
                "}" => "}",
                "[" => "[",
                "]" => "]",
                "," => ",",
                _ => "=>",
            }))
    }

    fn expect(&mut self, p: &'static str) -> bool {
        let ok = self.next() == Some(Token::Punct(p));
        if !ok {
            self.errors.push(format!("expected {p} near token {}", self.at));
        }
        ok
    }

    fn config(&mut self) {
        while let Some(token) = self.next() {
            match token {
                Token::Word(section) if PLUGINS.iter().any(|(s, _)| *s == section) => {
                    if self.expect("{") {
                        self.block(&section);
                    }
                }
                other => {
                    self.errors.push(format!("unknown top-level {other:?}"));
                    return;
                }
            }
        }
    }

    /// Plugins and conditionals up to the closing brace of a section.
    fn block(&mut self, section: &str) {
        loop {
            match self.next() {
                None => return,
                Some(Token::Punct("}")) => return,
                Some(Token::Word(w)) if w == "if" || w == "else" => {
                    // The condition runs to the block's opening brace.
                    while !self.peek_is("{") && self.at < self.tokens.len() {
                        self.at += 1;
                    }
                    if self.expect("{") {
                        self.block(section);
                    }
                }
                Some(Token::Word(name)) => {
                    let known = PLUGINS
                        .iter()
                        .any(|(s, names)| *s == section && names.contains(&name.as_str()));
                    if !known {
                        self.errors.push(format!("unknown {section} plugin {name}"));
                    }
                    if self.expect("{") {
                        let settings = self.settings();
                        self.plugins.push(Plugin { section: section.into(), name, settings });
                    }
                }
                Some(other) => {
                    self.errors.push(format!("unexpected {other:?} in {section}"));
                    return;
                }
            }
        }
    }

    /// `key => value` pairs up to a closing brace.
    fn settings(&mut self) -> Vec<(String, Setting)> {
        let mut out = Vec::new();
        loop {
            match self.next() {
                None | Some(Token::Punct("}")) => return out,
                Some(Token::Punct(",")) => {}
                Some(Token::Word(key) | Token::Str(key)) => {
                    if !self.expect("=>") {
                        return out;
                    }
                    let value = self.value();
                    out.push((key, value));
                }
                Some(other) => {
                    self.errors.push(format!("unexpected {other:?} in settings"));
                    return out;
                }
            }
        }
    }

    fn value(&mut self) -> Setting {
        match self.next() {
            Some(Token::Punct("[")) => {
                let mut items = Vec::new();
                while !self.peek_is("]") && self.at < self.tokens.len() {
                    if self.peek_is(",") {
                        self.at += 1;
                        continue;
                    }
                    items.push(self.value());
                }
                self.at += 1;
                Setting::List(items)
            }
            Some(Token::Punct("{")) => Setting::Hash(self.settings()),
            Some(Token::Word(s) | Token::Str(s)) => Setting::Scalar(s),
            other => {
                self.errors.push(format!("expected a value, found {other:?}"));
                Setting::Scalar(String::new())
            }
        }
    }
}

/// A field of `doc` by Logstash field reference: `[a.b]` is the top-level
/// key `a.b` (mapcast's dotted ECS keys), `[a][b]` a nested one.
fn field<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    let inner = reference.strip_prefix('[')?.strip_suffix(']')?;
    inner.split("][").try_fold(doc, |at, key| at.get(key)).filter(|v| !v.is_null())
}

/// Evaluates the filter section's conditionals for one document, as
/// Logstash would: which `mutate { add_field => ... }` settings apply.
/// Only the condition forms the pipeline uses are understood (`[f]` and
/// `[f] == "v"`); anything else fails the test, so the pipeline cannot grow a
/// condition this check silently misreads.
struct Evaluator<'a> {
    parser: Parser,
    doc: &'a Value,
    added: Vec<(String, String)>,
}

impl Evaluator<'_> {
    fn condition(&mut self) -> bool {
        let mut words = Vec::new();
        while !self.parser.peek_is("{") && self.parser.at < self.parser.tokens.len() {
            let token = self.parser.tokens[self.parser.at].clone();
            words.push(match token {
                Token::Word(w) | Token::Str(w) => w,
                Token::Punct(p) => p.to_owned(),
            });
            self.parser.at += 1;
        }
        // The tokenizer splits `[event.dataset]` into "[", "event.dataset", "]".
        let text = words.join("");
        let (reference, expected) = match text.split_once("==") {
            Some((r, _)) => (r.to_owned(), Some(words.last().cloned().unwrap_or_default())),
            None => (text.clone(), None),
        };
        let reference = reference.trim().to_owned();
        assert!(
            reference.starts_with('[') && reference.ends_with(']'),
            "a condition this check does not understand: {text}"
        );
        match (field(self.doc, &reference), expected) {
            (Some(value), Some(expected)) => value.as_str() == Some(expected.as_str()),
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Runs the statements up to the closing brace; `live` = this branch applies.
    fn block(&mut self, live: bool) {
        let mut chain_taken = false;
        loop {
            match self.parser.next() {
                None | Some(Token::Punct("}")) => return,
                Some(Token::Word(w)) if w == "if" => {
                    let hit = self.condition();
                    self.parser.expect("{");
                    self.block(live && hit);
                    chain_taken = hit;
                }
                Some(Token::Word(w)) if w == "else" => {
                    let is_if =
                        self.parser.tokens.get(self.parser.at) == Some(&Token::Word("if".into()));
                    let hit = if is_if {
                        self.parser.at += 1;
                        let hit = self.condition();
                        !chain_taken && hit
                    } else {
                        !chain_taken
                    };
                    self.parser.expect("{");
                    self.block(live && hit);
                    chain_taken |= hit;
                }
                Some(Token::Word(name)) => {
                    self.parser.expect("{");
                    let settings = self.parser.settings();
                    if live && name == "mutate" {
                        for (key, value) in settings {
                            let Setting::Hash(fields) = value else { continue };
                            if key != "add_field" {
                                continue;
                            }
                            for (k, v) in fields {
                                if let Setting::Scalar(v) = v {
                                    self.added.push((k, v));
                                }
                            }
                        }
                    }
                }
                Some(other) => panic!("unexpected {other:?} in the filter section"),
            }
        }
    }
}

/// The text of the shipped pipeline file.
pub fn pipeline_text() -> String {
    read(&repo("logstash/pipeline/mapcast.conf"))
}

/// The data stream the pipeline in `text` sends `doc` to (namespace
/// `default`, as `${MAPCAST_NAMESPACE:default}` resolves without the variable).
pub fn routed_stream(text: &str, doc: &Value) -> String {
    let mut errors = Vec::new();
    let tokens = tokenize(text, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let filter_at = tokens
        .windows(2)
        .position(|w| w[0] == Token::Word("filter".into()) && w[1] == Token::Punct("{"))
        .expect("a filter section");
    let parser = Parser { tokens, at: filter_at + 2, plugins: Vec::new(), errors: Vec::new() };
    let mut eval = Evaluator { parser, doc, added: Vec::new() };
    eval.block(true);
    let get = |key: &str| {
        let values: Vec<&String> =
            eval.added.iter().filter(|(k, _)| k == key).map(|(_, v)| v).collect();
        assert_eq!(values.len(), 1, "{key} set {} times for {doc}", values.len());
        values[0].replace("${MAPCAST_NAMESPACE:default}", "default")
    };
    format!(
        "{}-{}-{}",
        get("[data_stream][type]"),
        get("[data_stream][dataset]"),
        get("[data_stream][namespace]")
    )
}

fn scalar<'a>(settings: &'a [(String, Setting)], key: &str) -> Option<&'a str> {
    settings.iter().find_map(|(k, v)| match v {
        Setting::Scalar(s) if k == key => Some(s.as_str()),
        _ => None,
    })
}

fn parse(text: &str) -> (Vec<Plugin>, Vec<String>) {
    let mut errors = Vec::new();
    let tokens = tokenize(text, &mut errors);
    let mut parser = Parser { tokens, at: 0, plugins: Vec::new(), errors: Vec::new() };
    parser.config();
    errors.append(&mut parser.errors);
    (parser.plugins, errors)
}

/// The values of setting `key` of every `plugin` input of a pipeline
/// (a list setting gives each of its items).
pub fn input_settings(text: &str, plugin: &str, key: &str) -> Vec<String> {
    let (plugins, _) = parse(text);
    let mut out = Vec::new();
    for p in plugins.iter().filter(|p| p.section == "input" && p.name == plugin) {
        for (k, value) in p.settings.iter().filter(|(k, _)| k == key) {
            let _ = k;
            match value {
                Setting::Scalar(v) => out.push(v.clone()),
                Setting::List(items) => out.extend(items.iter().filter_map(|s| match s {
                    Setting::Scalar(v) => Some(v.clone()),
                    _ => None,
                })),
                Setting::Hash(_) => {}
            }
        }
    }
    out
}

/// Everything wrong with a pipeline file.
fn check_pipeline(text: &str) -> Vec<String> {
    let (plugins, mut errors) = parse(text);

    let mut ids = BTreeSet::new();
    for p in &plugins {
        match scalar(&p.settings, "id") {
            Some(id) if !ids.insert(id.to_owned()) => {
                errors.push(format!("duplicate plugin id {id}"))
            }
            Some(_) => {}
            None => errors.push(format!("{} plugin {} has no id", p.section, p.name)),
        }
    }
    for section in ["input", "output"] {
        if !plugins.iter().any(|p| p.section == section) {
            errors.push(format!("no {section} plugin"));
        }
    }
    for es in plugins.iter().filter(|p| p.name == "elasticsearch") {
        if scalar(&es.settings, "data_stream") != Some("true") {
            errors.push("the elasticsearch output does not write data streams".into());
        }
        let hosts = es.settings.iter().find(|(k, _)| k == "hosts").map(|(_, v)| v);
        if !matches!(hosts, Some(Setting::List(h)) if !h.is_empty()) {
            errors.push("the elasticsearch output has no hosts list".into());
        }
        if scalar(&es.settings, "index").is_some() {
            errors.push("the elasticsearch output names an index beside data streams".into());
        }
    }

    // Each routing branch sets a type and a dataset: the streams they name.
    let mut routed = BTreeSet::new();
    for p in plugins.iter().filter(|p| p.name == "mutate") {
        for (key, value) in &p.settings {
            let Setting::Hash(fields) = value else { continue };
            if key != "add_field" {
                continue;
            }
            let kind = scalar(fields, "[data_stream][type]");
            let dataset = scalar(fields, "[data_stream][dataset]");
            if let (Some(kind), Some(dataset)) = (kind, dataset) {
                routed.insert(format!("{kind}-{dataset}-default"));
            }
        }
    }
    let indices = Indices::new("default", false);
    let shipped: BTreeSet<String> = [Stream::App, Stream::Crash, Stream::Metrics]
        .iter()
        .map(|s| indices.of(*s).to_owned())
        .collect();
    if routed != shipped {
        errors.push(format!("routes to {routed:?}, the shipper writes {shipped:?}"));
    }
    errors
}

#[test]
fn the_pipeline_parses_and_routes_to_the_shippers_data_streams() {
    let errors = check_pipeline(&read(&repo("logstash/pipeline/mapcast.conf")));
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn pipelines_yml_loads_the_mapcast_pipeline_from_its_mounted_path() {
    let text = read(&repo("logstash/config/pipelines.yml"));
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("pipelines.yml is YAML");
    let pipelines = docs[0].as_vec().expect("a list of pipelines");
    assert_eq!(pipelines.len(), 1);
    assert_eq!(pipelines[0]["pipeline.id"].as_str(), Some("mapcast"));
    assert_eq!(
        pipelines[0]["path.config"].as_str(),
        Some("/usr/share/logstash/pipeline/mapcast.conf")
    );
}

#[test]
fn a_broken_pipeline_is_rejected_for_each_defect() {
    let errors = check_pipeline(&read(&repo("tests/fixtures/logstash/broken.conf")));
    assert_reports(
        &errors,
        &[
            "unbalanced: 1 unclosed",
            "unknown output plugin elasticsaerch",
            "unknown filter plugin mutat",
            "duplicate plugin id mapcast_route",
            "routes to",
            "\"logs-mapcast.crashes-default\"",
            "the elasticsearch output does not write data streams",
        ],
    );
}

#[test]
fn the_pipeline_routes_each_kind_of_document_by_its_dataset() {
    let text = read(&repo("logstash/pipeline/mapcast.conf"));
    let indices = Indices::new("default", false);
    let cases = [
        (serde_json::json!({"event.dataset": "mapcast.crash", "error.id": "x"}), Stream::Crash),
        (serde_json::json!({"event.dataset": "mapcast.broker"}), Stream::Metrics),
        (serde_json::json!({"event.dataset": "mapcast.app", "message": "hi"}), Stream::App),
        (serde_json::json!({"message": "no dataset"}), Stream::App),
    ];
    for (doc, stream) in cases {
        assert_eq!(routed_stream(&text, &doc), indices.of(stream), "{doc}");
    }
    // The evaluator can fail: a pipeline that routes crashes by the wrong field.
    let wrong =
        text.replace("[event.dataset] == \"mapcast.crash\"", "[event.kind] == \"mapcast.crash\"");
    assert_ne!(wrong, text);
    let crash = serde_json::json!({"event.dataset": "mapcast.crash"});
    assert_eq!(routed_stream(&wrong, &crash), indices.of(Stream::App));
}
