//! Prompt rendering (SPEC step 3): `prefix + item_1 + sep + ... + item_n + sep`.

use serde::{Deserialize, Serialize};

/// The two views of a user's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// Items as identifiers: `#<id>`.
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
}

impl Template {
    /// Renders a history (oldest first) as the `view` sees it.
    pub fn render<'a>(&self, view: View, items: impl IntoIterator<Item = ItemRef<'a>>) -> String {
        let mut out = self.prefix.clone();
        for item in items {
            match view {
                View::Behavioral => {
                    out.push('#');
                    out.push_str(item.id);
                }
                View::Semantic => out.push_str(item.text),
            }
            out.push_str(&self.sep);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_views() {
        let t = Template {
            prefix: "P:".into(),
            sep: "\n".into(),
        };
        let items = [
            ItemRef {
                id: "7",
                text: "Heat (1995)",
            },
            ItemRef {
                id: "9",
                text: "Fargo (1996)",
            },
        ];
        assert_eq!(t.render(View::Behavioral, items), "P:#7\n#9\n");
        assert_eq!(
            t.render(View::Semantic, items),
            "P:Heat (1995)\nFargo (1996)\n"
        );
        assert_eq!(t.render(View::Semantic, []), "P:");
    }
}
