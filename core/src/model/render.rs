//! A view's prompt for a history (SPEC step 3) fitted to the context, by one
//! rule for every caller (serving, personalization, teacher forcing): keep
//! the newest items whose rendered prompt fits `n_ctx` tokens.

use crate::backbone::{Backbone, BackboneError, Token};
use crate::prompt::{ItemRef, Template, View};

/// A rendered, tokenized prompt and the items it kept.
#[derive(Debug, Clone)]
pub struct FittedPrompt {
    /// The first item of the history the prompt shows (the ones before did
    /// not fit).
    pub first: usize,
    pub tokens: Vec<Token>,
}

/// Renders `items` (oldest first) as `view` sees them, dropping the oldest
/// until the prompt fits `n_ctx` tokens (an empty history always renders).
pub fn fit_prompt(
    backbone: &Backbone,
    template: &Template,
    view: View,
    items: &[ItemRef],
    n_ctx: usize,
) -> Result<FittedPrompt, BackboneError> {
    let mut first = 0;
    loop {
        let tokens = backbone.tokenize(&template.render(view, items[first..].iter().copied()))?;
        if tokens.len() <= n_ctx || first == items.len() {
            return Ok(FittedPrompt { first, tokens });
        }
        first += 1;
    }
}

/// The token position where each kept item ends (the last token of its
/// separator), ascending, for teacher forcing. An item the view does not show
/// (no codes: [`ItemRef::has_label`]) ends where the item before it did, or
/// at the prefix's last token.
pub fn item_ends(
    backbone: &Backbone,
    template: &Template,
    view: View,
    items: &[ItemRef],
    prompt: &FittedPrompt,
) -> Result<Vec<usize>, BackboneError> {
    let kept = &items[prompt.first..];
    let last = prompt.tokens.len().saturating_sub(1);
    let prefix_end = backbone
        .tokenize(&template.render(view, []))?
        .len()
        .saturating_sub(1)
        .min(last);
    let mut ends: Vec<usize> = Vec::with_capacity(kept.len());
    for i in 1..=kept.len() {
        let previous = ends.last().copied().unwrap_or(prefix_end);
        if view == View::Behavioral && !kept[i - 1].has_label() {
            ends.push(previous);
            continue;
        }
        // Token boundaries are where the prefix's own tokenization ends; a
        // separator that merged with the next item would shift them, so
        // clamp to stay ascending and inside the prompt.
        let len = backbone
            .tokenize(&template.render(view, kept[..i].iter().copied()))?
            .len();
        let floor = if ends.is_empty() { 0 } else { previous + 1 };
        ends.push(len.saturating_sub(1).clamp(floor.min(last), last));
    }
    Ok(ends)
}
