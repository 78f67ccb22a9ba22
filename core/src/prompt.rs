//! Prompt rendering (SPEC step 3): `prefix + item_1 + sep + ... + item_n + sep`.

use serde::{Deserialize, Serialize};

/// The two views of a user's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// Items as collaborative codes (v2) or identifiers `#<id>` (v1).
    Behavioral,
    /// Items as text.
    Semantic,
}

impl View {
    pub const BOTH: [View; 2] = [View::Behavioral, View::Semantic];

    pub fn name(self) -> &'static str {
        match self {
            View::Behavioral => "behavioral",
            View::Semantic => "semantic",
        }
    }
}

impl std::fmt::Display for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A view's prompt template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub prefix: String,
    pub sep: String,
}

/// An item as a prompt shows it.
#[derive(Debug, Clone, Copy)]
pub struct ItemRef<'a> {
    pub id: &'a str,
    pub text: &'a str,
    /// What the behavioral view writes for it.
    pub label: Label<'a>,
}

/// How the behavioral view shows an item (MODEL.md step 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label<'a> {
    /// `#<id>` (version 1, `render: id`).
    Id,
    /// The item's semantic ID, e.g. `K d Q` (version 2, `render: codes`).
    Code(&'a str),
    /// Nothing: an item without codes in a `render: codes` bundle (a cold item).
    Missing,
}

/// What a bundle's behavioral view renders (manifest `views.<view>.render`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Render {
    #[default]
    Id,
    Codes,
}

impl<'a> ItemRef<'a> {
    /// An item known by its text alone (a one-item semantic prompt).
    pub fn text_only(text: &'a str) -> Self {
        Self {
            id: "",
            text,
            label: Label::Missing,
        }
    }

    /// Whether the behavioral view shows this item at all.
    pub fn has_label(&self) -> bool {
        self.label != Label::Missing
    }
}

impl Template {
    /// Renders a history (oldest first) as the `view` sees it.
    pub fn render<'a>(&self, view: View, items: impl IntoIterator<Item = ItemRef<'a>>) -> String {
        let mut out = self.prefix.clone();
        for item in items {
            match view {
                View::Behavioral => match item.label {
                    Label::Id => {
                        out.push('#');
                        out.push_str(item.id);
                    }
                    Label::Code(code) => out.push_str(code),
                    Label::Missing => continue, // neither the item nor its separator
                },
                View::Semantic => out.push_str(item.text),
            }
            out.push_str(&self.sep);
        }
        out
    }
}

/// MODEL.md step 3's cap on an item text: the first `max_chars` characters
/// (0: no cap), cut back to the last space when the cap ends inside a word
/// (the next character is not a space, `,` or `;`), trailing spaces, `;` and
/// `,` removed. The trainer's `data.cap_text` is the same rule.
pub fn cap_text(text: &str, max_chars: usize) -> std::borrow::Cow<'_, str> {
    if max_chars == 0 {
        return text.into();
    }
    let Some((cut_at, next)) = text.char_indices().nth(max_chars) else {
        return text.into(); // no more than max_chars characters
    };
    let mut cut = &text[..cut_at];
    if !matches!(next, ' ' | ',' | ';') {
        if let Some(space) = cut.rfind(' ') {
            cut = &cut[..space];
        }
    }
    cut.trim_end_matches([' ', ';', ',']).to_owned().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_texts_as_the_trainer_does() {
        let t = "Toy Story (1995); Animation, Children's, Comedy";
        assert_eq!(cap_text(t, 0), t);
        assert_eq!(cap_text(t, 200), t);
        assert_eq!(cap_text(t, 27), "Toy Story (1995); Animation");
        assert_eq!(
            cap_text("Toy Story (1995); Animation", 20),
            "Toy Story (1995)"
        );
        assert_eq!(cap_text("abcdefgh", 4), "abcd");
        assert_eq!(cap_text("Amélie (2001)", 6), "Amélie");
    }

    #[test]
    fn renders_both_views() {
        let t = Template {
            prefix: "P:".into(),
            sep: "\n".into(),
        };
        let mut items = [
            ItemRef {
                id: "7",
                text: "Heat (1995)",
                label: Label::Id,
            },
            ItemRef {
                id: "9",
                text: "Fargo (1996)",
                label: Label::Id,
            },
        ];
        assert_eq!(t.render(View::Behavioral, items), "P:#7\n#9\n");
        assert_eq!(
            t.render(View::Semantic, items),
            "P:Heat (1995)\nFargo (1996)\n"
        );
        assert_eq!(t.render(View::Semantic, []), "P:");
        // Version 2: codes, and an item without codes is left out of the behavioral view only.
        items[0].label = Label::Code("K d Q");
        items[1].label = Label::Missing;
        assert_eq!(t.render(View::Behavioral, items), "P:K d Q\n");
        assert_eq!(
            t.render(View::Semantic, items),
            "P:Heat (1995)\nFargo (1996)\n"
        );
    }
}
