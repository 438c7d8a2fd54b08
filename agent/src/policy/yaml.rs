//! A small YAML document tree that remembers where every node, and every
//! mapping key, came from, built from `yaml-rust2`'s marked events.
//!
//! The policy validator needs a line and column for every value it may
//! reject, and wants duplicate mapping keys reported as ordinary validation
//! errors (all at once, naming both places) rather than as the first and only
//! parse error; hence this tree rather than a deserializer.
//!
//! Anchors, aliases and tags are not part of the policy language: they are
//! reported as errors (an alias becomes an [`Kind::Invalid`] node) and the
//! rest of the document is still checked.

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::error::{Errors, Place};

/// A node of the document with the place where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub place: Place,
    pub kind: Kind,
}

/// What a [`Node`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A scalar. `plain` is false for quoted and block scalars, which are
    /// always strings (a plain `~`, `null` or nothing at all is a null).
    Scalar { value: String, plain: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order, without duplicate keys (a duplicate is
    /// reported and dropped).
    Map(Vec<(Key, Node)>),
    /// Something the policy language does not allow (an alias), already
    /// reported.
    Invalid,
}

/// A mapping key and its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    pub name: String,
    pub place: Place,
}

impl Node {
    /// Whether this node is a YAML null (`~`, `null`, or no value at all).
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { value, plain: true }
            if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The text of a non-null scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { value, .. } if !self.is_null() => Some(value),
            _ => None,
        }
    }

    /// A short description of the node for error messages: the scalar text,
    /// or what kind of node it is.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Scalar { value, .. } if self.is_null() && value.is_empty() => "null".to_owned(),
            Kind::Scalar { value, .. } => value.clone(),
            Kind::Seq(_) => "a list".to_owned(),
            Kind::Map(_) => "a mapping".to_owned(),
            Kind::Invalid => "an alias".to_owned(),
        }
    }
}

/// One level of the document being built.
enum Frame {
    Seq {
        place: Place,
        items: Vec<Node>,
    },
    Map {
        place: Place,
        entries: Vec<(Key, Node)>,
        /// The key waiting for its value; `Some(None)` when the key was
        /// rejected (not a scalar) and its value is to be dropped.
        pending: Option<Option<Key>>,
    },
}

impl Frame {
    /// The path segment this frame adds for the node being built inside it.
    fn segment(&self) -> String {
        match self {
            Frame::Seq { items, .. } => format!("[{}]", items.len()),
            Frame::Map {
                pending: Some(Some(key)),
                ..
            } => format!(".{}", key.name),
            Frame::Map { .. } => String::new(),
        }
    }
}

/// Builds the tree from parser events.
struct Builder<'e> {
    stack: Vec<Frame>,
    root: Option<Node>,
    documents: usize,
    errors: &'e mut Errors,
}

impl Builder<'_> {
    /// The field path of the node about to be built.
    fn path(&self) -> String {
        let path: String = self.stack.iter().map(Frame::segment).collect();
        path.strip_prefix('.').unwrap_or(&path).to_owned()
    }

    fn reject_extras(&mut self, place: Place, anchor: usize, tagged: bool, what: &str) {
        if anchor != 0 {
            let path = self.path();
            self.errors.push(
                place,
                path,
                what,
                "YAML anchors (&name) are not supported in a policy",
            );
        }
        if tagged {
            let path = self.path();
            self.errors.push(
                place,
                path,
                what,
                "YAML tags (!tag) are not supported in a policy",
            );
        }
    }

    fn on_event(&mut self, event: Event, mark: Marker) {
        let place = place_of(mark);
        match event {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.errors.push(
                        place,
                        "",
                        "---",
                        "a policy file holds one YAML document; found a second one",
                    );
                }
            }
            Event::Scalar(value, style, anchor, tag) => {
                self.reject_extras(place, anchor, tag.is_some(), &value);
                let plain = style == TScalarStyle::Plain;
                self.complete(Node {
                    place,
                    kind: Kind::Scalar { value, plain },
                });
            }
            Event::Alias(_) => {
                let path = self.path();
                self.errors.push(
                    place,
                    path,
                    "",
                    "YAML aliases (*name) are not supported in a policy",
                );
                self.complete(Node {
                    place,
                    kind: Kind::Invalid,
                });
            }
            Event::SequenceStart(anchor, tag) => {
                self.reject_extras(place, anchor, tag.is_some(), "");
                self.stack.push(Frame::Seq {
                    place,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, tag) => {
                self.reject_extras(place, anchor, tag.is_some(), "");
                self.stack.push(Frame::Map {
                    place,
                    entries: Vec::new(),
                    pending: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(frame) = self.stack.pop() {
                    let node = match frame {
                        Frame::Seq { place, items } => Node {
                            place,
                            kind: Kind::Seq(items),
                        },
                        Frame::Map { place, entries, .. } => {
                            // A block mapping's start event is marked after
                            // its first key: the first key is where it starts.
                            let place = entries
                                .first()
                                .map_or(place, |(key, _)| place.min(key.place));
                            Node {
                                place,
                                kind: Kind::Map(entries),
                            }
                        }
                    };
                    self.complete(node);
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }

    /// Attaches a finished node to its parent (or makes it the root).
    fn complete(&mut self, node: Node) {
        let Some(frame) = self.stack.last_mut() else {
            // Only the first document counts; a second one was reported.
            if self.root.is_none() {
                self.root = Some(node);
            }
            return;
        };
        match frame {
            Frame::Seq { items, .. } => items.push(node),
            Frame::Map {
                entries, pending, ..
            } => match pending.take() {
                None => match node.kind {
                    Kind::Scalar { value, .. } => {
                        *pending = Some(Some(Key {
                            name: value,
                            place: node.place,
                        }))
                    }
                    _ => {
                        *pending = Some(None);
                        let what = node.describe();
                        let path = self.path();
                        self.errors.push(
                            node.place,
                            path,
                            what,
                            "mapping keys must be plain strings",
                        );
                    }
                },
                Some(None) => {}
                Some(Some(key)) => {
                    let mut node = node;
                    if matches!(&node.kind, Kind::Scalar { value, plain: true } if value.is_empty())
                    {
                        // A missing value is marked where the next token
                        // starts, possibly lines below: its key is the place.
                        node.place = key.place;
                    }
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == key.name) {
                        let message = format!(
                            "duplicate key: already given at line {}; a key may appear once",
                            first.place.line
                        );
                        let name = key.name.clone();
                        // The path of the duplicate is the parent's path plus the key.
                        let mut path = self.path();
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(&name);
                        self.errors.push(key.place, path, name, message);
                    } else {
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

/// Converts a parser mark (1-based line, 0-based column) to a [`Place`].
fn place_of(mark: Marker) -> Place {
    Place {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

/// Parses `source` into a tree. A syntax error is pushed as the only error
/// and gives `None` (the parser cannot go on after one); other problems (duplicate keys,
/// anchors, aliases, tags, several documents) are pushed to `errors` and the
/// tree is still returned. An empty document is an empty mapping.
pub(crate) fn parse(source: &str, errors: &mut Errors) -> Option<Node> {
    let mut parser = Parser::new_from_str(source);
    let mut builder = Builder {
        stack: Vec::new(),
        root: None,
        documents: 0,
        errors,
    };
    loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => break,
            Ok((event, mark)) => builder.on_event(event, mark),
            Err(error) => {
                let place = place_of(*error.marker());
                // The innermost segment (the next item or the pending key)
                // may not be what the error is about: name the container.
                builder.stack.pop();
                let path = builder.path();
                let line_text = source
                    .lines()
                    .nth(place.line.saturating_sub(1))
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                builder.errors.push(
                    place,
                    path,
                    line_text,
                    format!("YAML syntax error: {}", error.info()),
                );
                return None;
            }
        }
    }
    // No document, or an empty one (`---` alone): an empty mapping.
    let root = builder
        .root
        .take()
        .filter(|root| !root.is_null())
        .unwrap_or(Node {
            place: Place { line: 1, column: 1 },
            kind: Kind::Map(Vec::new()),
        });
    Some(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(source: &str) -> (Option<Node>, Errors) {
        let mut errors = Errors::new("t.yaml");
        let node = parse(source, &mut errors);
        (node, errors)
    }

    fn map(node: &Node) -> &[(Key, Node)] {
        match &node.kind {
            Kind::Map(entries) => entries,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn places_are_one_based() {
        let (node, errors) = tree("a: 1\nlist:\n  - x: \"y\"\n    z: w\n");
        assert!(errors.is_empty());
        let node = node.unwrap();
        assert_eq!(node.place, Place { line: 1, column: 1 });
        let entries = map(&node);
        assert_eq!(entries[1].0.name, "list");
        let Kind::Seq(items) = &entries[1].1.kind else {
            panic!()
        };
        assert_eq!(items[0].place, Place { line: 3, column: 5 });
        let inner = map(&items[0]);
        assert_eq!(inner[0].1.place, Place { line: 3, column: 8 });
        assert_eq!(
            inner[0].1.kind,
            Kind::Scalar {
                value: "y".into(),
                plain: false
            }
        );
    }

    #[test]
    fn nulls() {
        let (node, _) = tree("a:\nb: ~\nc: null\nd: \"\"\n");
        let node = node.unwrap();
        let nulls: Vec<bool> = map(&node).iter().map(|(_, v)| v.is_null()).collect();
        assert_eq!(nulls, [true, true, true, false]);
    }

    #[test]
    fn empty_documents_are_empty_maps() {
        for source in ["", "# only a comment\n", "---\n", "~\n"] {
            let (node, errors) = tree(source);
            assert!(errors.is_empty());
            assert_eq!(map(&node.unwrap()).len(), 0);
        }
    }

    #[test]
    fn duplicate_keys_are_all_reported() {
        let (node, errors) = tree("a: 1\nb:\n  x: 1\n  x: 2\na: 3\n");
        let node = node.unwrap();
        assert_eq!(map(&node).len(), 2);
        let errors = errors.into_sorted();
        assert_eq!(errors.len(), 2);
        assert_eq!((errors[0].line, errors[0].column), (4, 3));
        assert_eq!(errors[0].field, "b.x");
        assert!(errors[0].message.contains("line 3"));
        assert_eq!((errors[1].line, errors[1].field.as_str()), (5, "a"));
    }

    #[test]
    fn anchors_aliases_tags_and_documents_are_rejected() {
        let (_, errors) = tree("a: &x 1\nb: *x\nc: !!str 2\n---\nd: 1\n");
        let errors = errors.into_sorted();
        let fields: Vec<(usize, &str)> =
            errors.iter().map(|e| (e.line, e.field.as_str())).collect();
        assert_eq!(fields, [(1, "a"), (2, "b"), (3, "c"), (4, "")]);
    }

    #[test]
    fn syntax_error_has_place_and_path() {
        let (node, errors) = tree("envs:\n  prod: [\"10.0.0.0/8\"\nb: 3\n");
        assert!(node.is_none());
        let errors = errors.into_sorted();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.starts_with("YAML syntax error"));
        assert_eq!(errors[0].line, 3);
    }

    #[test]
    fn non_scalar_keys_are_rejected() {
        let (node, errors) = tree("? [a]\n: 1\nb: 2\n");
        assert_eq!(map(&node.unwrap()).len(), 1);
        assert_eq!(errors.into_sorted().len(), 1);
    }
}
