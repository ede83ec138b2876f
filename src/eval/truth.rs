//! **truth**: a generated caption is true when every claim it makes holds in the scene graph.
//! The caption is parsed with the grammar of data/captions.rs; a caption the parser cannot read
//! counts as false.
//!
//! Claims: each phrase names objects by shape and optionally size and colour; "a"/"an" claims at least
//! one such object, "two" and "three" exactly that many. A relation claims that some object of the
//! first phrase stands in that relation to a different object of the second.

use crate::data::scenes::{Object, Relation, Scene, Shape, COLOURS, SHAPES, SIZES};

#[derive(Clone, Debug, PartialEq)]
struct Phrase {
    count: Option<usize>,
    size: Option<crate::data::scenes::Size>,
    colour: Option<crate::data::scenes::Colour>,
    shape: Shape,
}

impl Phrase {
    fn matches(&self, o: &Object) -> bool {
        o.shape == self.shape
            && self.size.is_none_or(|s| s == o.size)
            && self.colour.is_none_or(|c| c == o.colour)
    }
    fn holds(&self, scene: &Scene) -> bool {
        let n = scene.objects.iter().filter(|o| self.matches(o)).count();
        match self.count {
            None => n >= 1,
            Some(k) => n == k,
        }
    }
}

fn phrase(words: &[&str], at: &mut usize) -> Option<Phrase> {
    let count = match *words.get(*at)? {
        "a" | "an" => None,
        "two" => Some(2),
        "three" => Some(3),
        _ => return None,
    };
    *at += 1;
    let size = SIZES
        .iter()
        .copied()
        .find(|s| words.get(*at) == Some(&s.word()));
    if size.is_some() {
        *at += 1;
    }
    let colour = COLOURS
        .iter()
        .copied()
        .find(|c| words.get(*at) == Some(&c.word()));
    if colour.is_some() {
        *at += 1;
    }
    let word = *words.get(*at)?;
    let shape = SHAPES.iter().copied().find(|s| {
        if count.is_none() {
            word == s.word()
        } else {
            word == s.plural()
        }
    })?;
    *at += 1;
    Some(Phrase {
        count,
        size,
        colour,
        shape,
    })
}

fn relation(words: &[&str], at: &mut usize) -> Option<Relation> {
    let (rel, len) = match (words.get(*at).copied(), words.get(*at + 1).copied()) {
        (Some("left"), Some("of")) => (Relation::LeftOf, 2),
        (Some("right"), Some("of")) => (Relation::RightOf, 2),
        (Some("above"), _) => (Relation::Above, 1),
        (Some("below"), _) => (Relation::Below, 1),
        _ => return None,
    };
    *at += len;
    Some(rel)
}

/// Whether every claim of `caption` holds in `scene` (false when it cannot be parsed).
pub fn is_true(caption: &str, scene: &Scene) -> bool {
    let words: Vec<&str> = caption.split_whitespace().collect();
    let mut at = 0;
    let Some(first) = phrase(&words, &mut at) else {
        return false;
    };
    if at == words.len() {
        return first.holds(scene);
    }
    if let Some(rel) = relation(&words, &mut at) {
        let Some(second) = phrase(&words, &mut at) else {
            return false;
        };
        if at != words.len() || !first.holds(scene) || !second.holds(scene) {
            return false;
        }
        let objs = &scene.objects;
        return objs.iter().enumerate().any(|(i, a)| {
            first.matches(a)
                && objs
                    .iter()
                    .enumerate()
                    .any(|(j, b)| i != j && second.matches(b) && Relation::of(a, b) == rel)
        });
    }
    let mut phrases = vec![first];
    while at < words.len() {
        if words[at] != "and" {
            return false;
        }
        at += 1;
        match phrase(&words, &mut at) {
            Some(p) => phrases.push(p),
            None => return false,
        }
    }
    phrases.iter().all(|p| p.holds(scene))
}

/// The share of captions that are true of their scenes.
pub fn truth(captions: &[String], scenes: &[Scene]) -> f64 {
    if captions.is_empty() {
        return 0.0;
    }
    captions
        .iter()
        .zip(scenes)
        .filter(|(c, s)| is_true(c, s))
        .count() as f64
        / captions.len() as f64
}
