//! One value for each of the two views, held one way everywhere: experts,
//! sessions, gate scales, view states, the manifest's view specs.

use std::ops::{Index, IndexMut};

use serde::{Deserialize, Serialize};

use crate::prompt::View;

/// `behavioral` and `semantic`, indexable by [`View`]. Serializes as an
/// object with those two keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerView<T> {
    pub behavioral: T,
    pub semantic: T,
}

impl<T> PerView<T> {
    pub fn new(behavioral: T, semantic: T) -> Self {
        Self {
            behavioral,
            semantic,
        }
    }

    /// The value of each view, behavioral first.
    pub fn from_fn(mut f: impl FnMut(View) -> T) -> Self {
        let behavioral = f(View::Behavioral);
        Self::new(behavioral, f(View::Semantic))
    }

    /// [`PerView::from_fn`] for work that can fail (behavioral first).
    pub fn try_from_fn<E>(mut f: impl FnMut(View) -> Result<T, E>) -> Result<Self, E> {
        let behavioral = f(View::Behavioral)?;
        Ok(Self::new(behavioral, f(View::Semantic)?))
    }

    pub fn get(&self, view: View) -> &T {
        match view {
            View::Behavioral => &self.behavioral,
            View::Semantic => &self.semantic,
        }
    }

    pub fn get_mut(&mut self, view: View) -> &mut T {
        match view {
            View::Behavioral => &mut self.behavioral,
            View::Semantic => &mut self.semantic,
        }
    }

    pub fn as_ref(&self) -> PerView<&T> {
        PerView::new(&self.behavioral, &self.semantic)
    }

    pub fn map<U>(self, mut f: impl FnMut(View, T) -> U) -> PerView<U> {
        let behavioral = f(View::Behavioral, self.behavioral);
        PerView::new(behavioral, f(View::Semantic, self.semantic))
    }

    /// `(view, value)`, behavioral first.
    pub fn iter(&self) -> impl Iterator<Item = (View, &T)> {
        [
            (View::Behavioral, &self.behavioral),
            (View::Semantic, &self.semantic),
        ]
        .into_iter()
    }
}

impl<T> Index<View> for PerView<T> {
    type Output = T;

    fn index(&self, view: View) -> &T {
        self.get(view)
    }
}

impl<T> IndexMut<View> for PerView<T> {
    fn index_mut(&mut self, view: View) -> &mut T {
        self.get_mut(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_and_serializes_by_view_name() {
        let mut v = PerView::from_fn(|view| view.name().len());
        assert_eq!((v[View::Behavioral], v[View::Semantic]), (10, 8));
        v[View::Semantic] += 1;
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"{"behavioral":10,"semantic":9}"#);
        let order: Vec<View> = v.iter().map(|(view, _)| view).collect();
        assert_eq!(order, View::BOTH);
    }
}
