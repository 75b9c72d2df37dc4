//! [`Schemas`]: the `[schemas]` table, topic patterns mapped to JSON Schema
//! files, loaded and compiled once when the configuration is read.
//!
//! ```toml
//! [schemas]
//! "org.example.prod.billing.invoice.new" = "schemas/invoice.v1.json"   # name "invoice.v1"
//! "org.example.prod.billing.#" = { file = "schemas/billing.json", name = "billing.message.v1" }
//! ```
//!
//! - **Patterns** are whole topics in AMQP's topic-binding syntax, which
//!   fedora-messaging's `[[bindings]]` use too: words separated by `.`,
//!   where `*` stands for exactly one word and `#` for zero or more. A
//!   pattern without either is an exact topic. When several patterns match
//!   a topic the most specific wins, compared word by word from the left:
//!   at the first word where they differ a literal word beats `*`, and `*`
//!   beats `#`; a pattern that runs on where the other ends wins (so an
//!   exact topic beats every pattern that also matches it); a full tie goes
//!   to the pattern that sorts first as text.
//! - **Files** are relative to the configuration file, like every path of
//!   it. Each is read and compiled once: its `$schema` picks the draft (4,
//!   6, 7, 2019-09 or 2020-12; 2020-12 without one), a schema that is not
//!   valid for its draft is refused with the JSON pointer of the bad part,
//!   and nothing is ever fetched (a `$ref` to another file or URL is
//!   refused). `format` is an annotation only, as in fedora-messaging,
//!   which calls Python's `jsonschema.validate` without a format checker.
//! - **Names** are what publishers put in `fedora_messaging_schema`; the
//!   default is the file name without its last extension
//!   (`invoice.v1.json` is `invoice.v1`). One name, one file.
//!
//! The rule that uses them is `gilmsg_proto::schema`; this type is its
//! [`SchemaCheck`].

use std::cmp::Ordering;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gilmsg_proto::envelope::is_unsafe_char;
use gilmsg_proto::schema::{SchemaCheck, SchemaVerdict, SchemaViolation};
use serde_json::Value;

/// The longest schema name accepted, in characters.
pub const MAX_SCHEMA_NAME: usize = 255;

/// A topic pattern: dotted words, `*` for one word, `#` for any number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    words: Vec<Word>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Word {
    Literal(String),
    /// `*`: exactly one word.
    One,
    /// `#`: zero or more words.
    Any,
}

impl Word {
    /// How specific the word is: literal > `*` > `#`.
    fn rank(&self) -> u8 {
        match self {
            Word::Literal(_) => 2,
            Word::One => 1,
            Word::Any => 0,
        }
    }
}

impl TopicPattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<TopicPattern, String> {
        if text.is_empty() {
            return Err("an empty topic pattern; `#` matches every topic".into());
        }
        if text.chars().any(is_unsafe_char) {
            return Err("the topic pattern holds a control character".into());
        }
        if let Some(stem) = text.strip_suffix('.') {
            return Err(format!(
                "the topic pattern ends with `.`; for every topic under {stem:?} write \"{stem}.#\""
            ));
        }
        let words = text
            .split('.')
            .map(|word| match word {
                "" => Err(format!(
                    "the topic pattern {text:?} has an empty word (`..`, or a leading `.`)"
                )),
                "*" => Ok(Word::One),
                "#" => Ok(Word::Any),
                w if w.contains(['*', '#']) => Err(format!(
                    "{w:?} in {text:?}: `*` and `#` stand for whole words (`a.*.c`, `a.#`), \
                     not parts of one"
                )),
                w => Ok(Word::Literal(w.to_owned())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TopicPattern {
            text: text.to_owned(),
            words,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` matches. Costs at most (pattern words) x (topic
    /// words) steps, whatever the `#`s.
    pub fn matches(&self, topic: &str) -> bool {
        let topic: Vec<&str> = topic.split('.').collect();
        // at[i]: the pattern read so far can end right before topic word i.
        let mut at = vec![false; topic.len() + 1];
        at[0] = true;
        for word in &self.words {
            let mut next = vec![false; topic.len() + 1];
            match word {
                Word::Any => {
                    if let Some(first) = at.iter().position(|&b| b) {
                        next[first..].iter_mut().for_each(|b| *b = true);
                    }
                }
                Word::One => next[1..].copy_from_slice(&at[..topic.len()]),
                Word::Literal(w) => {
                    for i in 0..topic.len() {
                        next[i + 1] = at[i] && topic[i] == w;
                    }
                }
            }
            if !next.contains(&true) {
                return false;
            }
            at = next;
        }
        at[topic.len()]
    }

    /// Most specific first (see the module doc).
    fn specificity(&self, other: &TopicPattern) -> Ordering {
        let ranks = |p: &TopicPattern| p.words.iter().map(Word::rank).collect::<Vec<_>>();
        ranks(other)
            .cmp(&ranks(self))
            .then_with(|| self.text.cmp(&other.text))
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One entry of [`Schemas`]: a pattern, the schema file, its name.
#[derive(Clone)]
struct Rule {
    pattern: TopicPattern,
    file: PathBuf,
    name: String,
    validator: Arc<jsonschema::Validator>,
}

/// One entry of [`Schemas`], as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaEntry<'a> {
    /// The topic pattern.
    pub pattern: &'a str,
    /// The schema file (absolute once read from a file).
    pub file: &'a Path,
    /// The schema's name (`fedora_messaging_schema`).
    pub name: &'a str,
}

/// The `[schemas]` table: topic patterns, each with a compiled JSON Schema
/// and its name, most specific pattern first. Cheap to clone (the compiled
/// schemas are shared). Empty by default: nothing is checked.
#[derive(Clone, Default)]
pub struct Schemas {
    rules: Arc<Vec<Rule>>,
}

impl Schemas {
    /// Whether no schema is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The entries, most specific pattern first.
    pub fn entries(&self) -> impl Iterator<Item = SchemaEntry<'_>> {
        self.rules.iter().map(|r| SchemaEntry {
            pattern: r.pattern.as_str(),
            file: &r.file,
            name: &r.name,
        })
    }

    /// Reads and compiles the schema in `file` and maps `pattern` to it,
    /// under `name` (default: the file name without its last extension).
    /// The error is the reason, for the caller to put beside the key; it
    /// names the file, and for a schema that is not valid the JSON pointer
    /// of the bad part.
    pub fn insert(&mut self, pattern: &str, file: &Path, name: Option<&str>) -> Result<(), String> {
        let pattern = TopicPattern::parse(pattern)?;
        if self.rules.iter().any(|r| r.pattern == pattern) {
            return Err(format!("the topic pattern {pattern:?} is listed twice"));
        }
        let name = match name {
            Some(n) => n.to_owned(),
            None => default_name(file)?,
        };
        check_name(&name)?;
        if let Some(other) = self.rules.iter().find(|r| r.name == name && r.file != file) {
            return Err(format!(
                "the schema name {name:?} already names {} (for {:?}); one name, one file: \
                 give this one another `name`",
                other.file.display(),
                other.pattern.as_str()
            ));
        }
        let validator = match self.rules.iter().find(|r| r.file == file) {
            Some(same_file) => Arc::clone(&same_file.validator),
            None => Arc::new(compile(file)?),
        };
        let rules = Arc::make_mut(&mut self.rules);
        rules.push(Rule {
            pattern,
            file: file.to_path_buf(),
            name,
            validator,
        });
        rules.sort_by(|a, b| a.pattern.specificity(&b.pattern));
        Ok(())
    }

    fn rule_for(&self, topic: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.pattern.matches(topic))
    }
}

impl SchemaCheck for Schemas {
    fn schema_for(&self, topic: &str) -> Option<&str> {
        self.rule_for(topic).map(|r| r.name.as_str())
    }

    fn check(&self, topic: &str, msg: &Value) -> SchemaVerdict<'_> {
        let Some(rule) = self.rule_for(topic) else {
            return SchemaVerdict::Unchecked;
        };
        match rule.validator.validate(msg) {
            Ok(()) => SchemaVerdict::Passed { schema: &rule.name },
            Err(e) => SchemaVerdict::Failed(SchemaViolation::new(
                &rule.name,
                e.instance_path().as_str(),
                e.kind().keyword(),
                // Without the offending value: it may be large or private.
                &e.masked().to_string(),
            )),
        }
    }
}

impl fmt::Debug for Schemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries()).finish()
    }
}

impl PartialEq for Schemas {
    /// Same patterns, files and names (the compiled schemas follow).
    fn eq(&self, other: &Schemas) -> bool {
        self.entries().eq(other.entries())
    }
}

impl Eq for Schemas {}

/// The file name without its last extension.
fn default_name(file: &Path) -> Result<String, String> {
    file.file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "cannot make a schema name from the file name {}; give a `name`",
                file.display()
            )
        })
}

fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("the schema name is empty".into());
    }
    if name.chars().any(is_unsafe_char) {
        return Err(format!(
            "the schema name {name:?} holds a control character"
        ));
    }
    if name.chars().count() > MAX_SCHEMA_NAME {
        return Err(format!(
            "the schema name is longer than {MAX_SCHEMA_NAME} characters"
        ));
    }
    Ok(())
}

/// The largest schema file read, in bytes: far beyond any real schema; it
/// exists so that a path such as `/dev/zero` cannot exhaust memory.
pub const MAX_SCHEMA_FILE: u64 = 16 << 20;

/// The text of a regular file of at most [`MAX_SCHEMA_FILE`] bytes. Not a
/// FIFO or a device: opening one could block the process at start, or read
/// for ever.
fn read_bounded(file: &Path) -> std::io::Result<String> {
    use std::io::{Error, Read};
    if !std::fs::metadata(file)?.is_file() {
        return Err(Error::other("not a regular file"));
    }
    let mut text = String::new();
    std::fs::File::open(file)?
        .take(MAX_SCHEMA_FILE + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SCHEMA_FILE {
        return Err(Error::other(format!(
            "larger than {} MiB",
            MAX_SCHEMA_FILE >> 20
        )));
    }
    Ok(text)
}

/// Reads, parses and compiles one schema file.
fn compile(file: &Path) -> Result<jsonschema::Validator, String> {
    let shown = file.display();
    let text = read_bounded(file).map_err(|e| format!("cannot read schema file {shown}: {e}"))?;
    let schema: Value =
        serde_json::from_str(&text).map_err(|e| format!("schema file {shown} is not JSON: {e}"))?;
    jsonschema::options()
        .should_validate_formats(false)
        .build(&schema)
        .map_err(|e| {
            let pointer = e.instance_path().as_str();
            format!(
                "schema file {shown} is not a valid JSON Schema: at \"{pointer}\"{}: {e}",
                if pointer.is_empty() { " (the top)" } else { "" }
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pattern(text: &str) -> TopicPattern {
        TopicPattern::parse(text).unwrap()
    }

    #[test]
    fn patterns_match_dotted_words() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.b.c", "a.b.c.d", false),
            ("a.b.c", "a.b", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.*.c", "a.b.b.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c.d", true),
            ("a.#", "ab.c", false),
            ("#", "anything.at.all", true),
            ("#.c", "c", true),
            ("#.c", "a.b.c", true),
            ("#.c", "a.b.cd", false),
            ("a.#.c.#.e", "a.c.e", true),
            ("a.#.c.#.e", "a.x.c.y.z.e", true),
            ("a.#.c.#.e", "a.x.y.z.e", false),
            ("*.#", "", true),
            ("*", "a.b", false),
        ];
        for (p, topic, expected) in cases {
            assert_eq!(pattern(p).matches(topic), expected, "{p} ~ {topic}");
        }
        // Many `#`s against a long topic: bounded work, no backtracking.
        let hashes = vec!["#"; 64].join(".") + ".z";
        let long = vec!["a"; 20_000].join(".");
        assert!(!pattern(&hashes).matches(&long));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (text, hint) in [
            ("", "`#` matches every topic"),
            ("a.b.", "\"a.b.#\""),
            ("a..b", "empty word"),
            ("a.b*", "whole words"),
            ("a.\u{1b}", "control character"),
        ] {
            let e = TopicPattern::parse(text).unwrap_err();
            assert!(e.contains(hint), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let mut patterns = [
            "#",
            "org.example.#",
            "org.*.prod.#",
            "org.example.prod.billing.invoice.new",
            "org.example.prod.*.invoice.new",
            "org.example.prod.billing.#",
        ]
        .map(pattern);
        patterns.sort_by(|a, b| a.specificity(b));
        let topic = "org.example.prod.billing.invoice.new";
        let order: Vec<&str> = patterns
            .iter()
            .filter(|p| p.matches(topic))
            .map(TopicPattern::as_str)
            .collect();
        assert_eq!(
            order,
            [
                "org.example.prod.billing.invoice.new",
                "org.example.prod.billing.#",
                "org.example.prod.*.invoice.new",
                "org.example.#",
                "org.*.prod.#",
                "#",
            ]
        );
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const INVOICE: &str = r#"{
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "required": ["amount"],
        "properties": {"amount": {"type": "integer", "minimum": 0}}
    }"#;

    #[test]
    fn check_names_the_schema_the_path_and_the_keyword_without_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let invoice = write(dir.path(), "invoice.v1.json", INVOICE);
        let any = write(dir.path(), "any.json", r#"{"type": "object"}"#);
        let mut schemas = Schemas::default();
        schemas
            .insert("org.example.prod.billing.invoice.*", &invoice, None)
            .unwrap();
        schemas
            .insert("org.example.#", &any, Some("base.message"))
            .unwrap();
        let topic = "org.example.prod.billing.invoice.new";
        assert_eq!(schemas.schema_for(topic), Some("invoice.v1"));
        assert_eq!(
            schemas.check(topic, &json!({"amount": 3})),
            SchemaVerdict::Passed {
                schema: "invoice.v1"
            }
        );
        let SchemaVerdict::Failed(v) = schemas.check(topic, &json!({"amount": "secret-123"}))
        else {
            panic!("a string amount passed");
        };
        assert_eq!(
            (v.instance_path.as_str(), v.keyword.as_str()),
            ("/amount", "type")
        );
        assert!(!v.reason.contains("secret-123"), "{v}");
        let SchemaVerdict::Failed(v) = schemas.check(topic, &json!({})) else {
            panic!("a missing amount passed");
        };
        assert_eq!(
            (v.instance_path.as_str(), v.keyword.as_str()),
            ("", "required")
        );
        // Draft 4: 1.0 is not an integer (later drafts say it is).
        assert!(matches!(
            schemas.check(topic, &json!({"amount": 1.0})),
            SchemaVerdict::Failed(_)
        ));
        assert_eq!(
            schemas.check("org.example.other", &json!({})),
            SchemaVerdict::Passed {
                schema: "base.message"
            }
        );
        assert_eq!(
            schemas.check("org.other", &json!(1)),
            SchemaVerdict::Unchecked
        );
        // Formats are annotations, as in fedora-messaging.
        let email = write(
            dir.path(),
            "email.json",
            r#"{"$schema": "http://json-schema.org/draft-07/schema#", "format": "email"}"#,
        );
        schemas.insert("mail", &email, None).unwrap();
        assert!(matches!(
            schemas.check("mail", &json!("not an address")),
            SchemaVerdict::Passed { .. }
        ));
    }

    #[test]
    fn bad_schema_files_are_refused_naming_the_file_and_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let not_json = write(dir.path(), "broken.json", "{\"type\": ");
        let bad_type = write(
            dir.path(),
            "bad.json",
            r#"{"properties": {"amount": {"type": "integr"}}}"#,
        );
        let remote = write(
            dir.path(),
            "remote.json",
            r#"{"$ref": "https://example.invalid/schema.json"}"#,
        );
        let dev_zero = PathBuf::from("/dev/zero");
        let huge = dir.path().join("huge.json");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(MAX_SCHEMA_FILE + 1)
            .unwrap();
        let cases = [
            (&dev_zero, "not a regular file"),
            (&huge, "larger than 16 MiB"),
            (&missing, "cannot read schema file"),
            (&not_json, "is not JSON"),
            (&bad_type, "at \"/properties/amount/type\""),
            (&remote, "not a valid JSON Schema"),
        ];
        for (file, expected) in cases {
            let e = Schemas::default().insert("a.#", file, None).unwrap_err();
            assert!(e.contains(&file.display().to_string()), "{e}");
            assert!(e.contains(expected), "{expected}: {e}");
        }
    }

    #[test]
    fn names_are_checked_and_one_name_is_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.json", "{}");
        let b = write(dir.path(), "b.json", "{}");
        let mut schemas = Schemas::default();
        schemas.insert("x.#", &a, Some("shared")).unwrap();
        // The same file under the same name for another pattern: fine.
        schemas.insert("y.#", &a, Some("shared")).unwrap();
        let e = schemas.insert("z.#", &b, Some("shared")).unwrap_err();
        assert!(e.contains("one name, one file"), "{e}");
        let e = schemas.insert("x.#", &b, None).unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        for bad in ["", " ", "a\nb", &"n".repeat(MAX_SCHEMA_NAME + 1)] {
            assert!(schemas.insert("w", &b, Some(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(schemas.entries().count(), 2);
    }

    #[test]
    fn catastrophic_patterns_fail_the_check_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        // The second needs the backtracking engine (a look-ahead), whose
        // backtrack limit ends the match; the first runs in linear time.
        for pattern in ["^(a+)+$", "^(?=(a+)+$)a"] {
            let file = write(
                dir.path(),
                "p.json",
                &json!({"type": "string", "pattern": pattern}).to_string(),
            );
            let mut schemas = Schemas::default();
            schemas.insert("t", &file, None).unwrap();
            let evil = format!("{}b", "a".repeat(5_000));
            let started = std::time::Instant::now();
            assert!(
                matches!(schemas.check("t", &json!(evil)), SchemaVerdict::Failed(_)),
                "{pattern}"
            );
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "{pattern}: {:?}",
                started.elapsed()
            );
            assert!(matches!(
                schemas.check("t", &json!("aaa")),
                SchemaVerdict::Passed { .. }
            ));
        }
    }

    #[test]
    fn deep_bodies_against_a_recursive_schema_do_not_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let tree = write(
            dir.path(),
            "tree.json",
            r##"{"type": "array", "items": {"$ref": "#"}}"##,
        );
        let mut schemas = Schemas::default();
        schemas.insert("t", &tree, None).unwrap();
        // As deep as the envelope decoder lets a msg be.
        let mut deep = json!([]);
        for _ in 0..gilmsg_proto::canonical::MAX_DEPTH - 2 {
            deep = json!([deep]);
        }
        let handle = std::thread::Builder::new()
            // The consumer's socket thread has the default stack.
            .spawn(move || matches!(schemas.check("t", &deep), SchemaVerdict::Passed { .. }))
            .unwrap();
        assert!(handle.join().unwrap());
    }
}
