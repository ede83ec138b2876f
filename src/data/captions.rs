//! Reference captions from a small grammar over the scene graph, and the word-level vocabulary.
//!
//!   caption  := phrase ("and" phrase)* | phrase relation phrase
//!   phrase   := ("a" | "an") [size] [colour] shape | ("two" | "three") [size] [colour] shapes
//!   relation := "left of" | "right of" | "above" | "below"
//!
//! Every reference is true of its scene: candidates are kept only when src/eval/truth.rs, which
//! parses this grammar, finds all their claims hold.

use super::scenes::{Object, Relation, Scene, COLOURS, SHAPES, SIZES};
use crate::model::Tokenizer;

/// "a" or "an", by the next word's first letter.
fn article(next: &str) -> &'static str {
    if next.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// The words after an article, with an article chosen for them.
fn one(rest: String) -> String {
    format!("{} {rest}", article(&rest))
}

/// "a small red circle"
fn full(o: &Object) -> String {
    one(format!(
        "{} {} {}",
        o.size.word(),
        o.colour.word(),
        o.shape.word()
    ))
}

/// "a red circle"
fn short(o: &Object) -> String {
    one(format!("{} {}", o.colour.word(), o.shape.word()))
}

/// The objects grouped by (shape, colour), in order of first appearance.
fn groups(scene: &Scene) -> Vec<Vec<&Object>> {
    let mut out: Vec<Vec<&Object>> = vec![];
    for o in &scene.objects {
        match out
            .iter_mut()
            .find(|g| g[0].shape == o.shape && g[0].colour == o.colour)
        {
            Some(g) => g.push(o),
            None => out.push(vec![o]),
        }
    }
    out
}

/// "two red circles" (or three), or the object's full phrase when it is alone of its kind.
fn group_phrase(g: &[&Object]) -> String {
    match g.len() {
        1 => full(g[0]),
        n => format!(
            "{} {} {}",
            number(n),
            g[0].colour.word(),
            g[0].shape.plural()
        ),
    }
}

fn number(n: usize) -> &'static str {
    if n == 2 {
        "two"
    } else {
        "three"
    }
}

/// Candidate captions of a scene, most specific first (some may be false: see `references`).
fn candidates(scene: &Scene) -> Vec<String> {
    let objs = &scene.objects;
    let mut out = vec![];
    if objs.len() == 1 {
        let o = &objs[0];
        out.push(full(o));
        out.push(short(o));
        out.push(one(format!("{} {}", o.size.word(), o.shape.word())));
        out.push(one(o.shape.word().to_string()));
        return out;
    }
    let gs = groups(scene);
    let listed: Vec<String> = gs.iter().map(|g| group_phrase(g)).collect();
    out.push(listed.join(" and "));
    if gs.len() > 1 {
        out.push(
            listed
                .iter()
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join(" and "),
        );
    }
    for g in gs.iter().filter(|g| g.len() > 1) {
        let (n, first) = (number(g.len()), g[0]);
        if g.iter().all(|o| o.size == first.size) {
            out.push(format!(
                "{n} {} {} {}",
                first.size.word(),
                first.colour.word(),
                first.shape.plural()
            ));
        }
        out.push(format!("{n} {}", first.shape.plural()));
    }
    // Relations between objects that their full phrases tell apart.
    for (i, a) in objs.iter().enumerate() {
        for b in objs.iter().skip(i + 1) {
            if (a.shape, a.colour, a.size) != (b.shape, b.colour, b.size) {
                out.push(format!(
                    "{} {} {}",
                    full(a),
                    Relation::of(a, b).words(),
                    full(b)
                ));
                out.push(format!(
                    "{} {} {}",
                    full(b),
                    Relation::of(b, a).words(),
                    full(a)
                ));
            }
        }
    }
    out
}

/// Several correct captions of a scene (up to 4), most specific first: the candidates whose
/// every claim holds.
pub fn references(scene: &Scene) -> Vec<String> {
    let mut refs: Vec<String> = vec![];
    for c in candidates(scene) {
        if crate::eval::truth::is_true(&c, scene) && !refs.contains(&c) {
            refs.push(c);
        }
    }
    refs.truncate(4);
    refs
}

/// Every word the grammar uses.
pub fn words() -> Vec<String> {
    let mut w: Vec<String> = [
        "a", "an", "two", "three", "and", "left", "right", "of", "above", "below",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    w.extend(SIZES.iter().map(|s| s.word().to_string()));
    w.extend(COLOURS.iter().map(|c| c.word().to_string()));
    w.extend(SHAPES.iter().map(|s| s.word().to_string()));
    w.extend(SHAPES.iter().map(|s| s.plural()));
    w
}

/// The vocabulary: the four special tokens, then the grammar's words.
pub fn tokenizer() -> Tokenizer {
    Tokenizer::new(&words())
}
