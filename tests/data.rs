//! The generated scenes, their captions, the vocabulary and the truth checker.

mod common;
use amad::data::captions::{references, tokenizer};
use amad::data::scenes::{inside, Background, Colour, Relation, Scene, Shape, Size, Split, SIZE};
use amad::eval::truth::{is_true, truth};
use common::obj;
use std::collections::HashSet;

#[test]
fn scenes_are_deterministic_and_the_splits_differ() {
    for i in 0..50 {
        assert_eq!(
            Scene::generate(Split::Test, i),
            Scene::generate(Split::Test, i)
        );
    }
    let same = (0..300)
        .filter(|&i| Scene::generate(Split::Train, i) == Scene::generate(Split::Test, i))
        .count();
    assert_eq!(same, 0, "train and test scenes coincide");
}

#[test]
fn scenes_cover_every_attribute_and_relation() {
    let (mut shapes, mut colours, mut sizes, mut counts, mut backgrounds, mut relations) = (
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
    );
    for i in 0..2000 {
        let s = Scene::generate(Split::Train, i);
        counts.insert(s.objects.len());
        backgrounds.insert(std::mem::discriminant(&s.background));
        for o in &s.objects {
            shapes.insert(o.shape);
            colours.insert(o.colour);
            sizes.insert(o.size);
            for p in &s.objects {
                if o != p {
                    relations.insert(Relation::of(o, p));
                }
            }
            let r = o.size.radius();
            assert!(
                o.x - r >= 0.0
                    && o.x + r <= SIZE as f32
                    && o.y - r >= 0.0
                    && o.y + r <= SIZE as f32,
                "{o:?} leaves the image"
            );
        }
    }
    assert_eq!(
        (
            shapes.len(),
            colours.len(),
            sizes.len(),
            backgrounds.len(),
            relations.len()
        ),
        (5, 8, 2, 3, 4)
    );
    assert_eq!(counts, HashSet::from([1, 2, 3]));
}

#[test]
fn objects_are_drawn_in_their_colour() {
    for i in 0..100 {
        let s = Scene::generate(Split::Validation, i);
        let px = s.render();
        assert_eq!(px.len(), SIZE * SIZE * 3);
        for o in &s.objects {
            let (x, y) = (o.x as usize, o.y as usize);
            assert!(
                inside(o, x as f32 + 0.5, y as f32 + 0.5) || o.shape == Shape::Triangle,
                "{o:?}"
            );
            // A pixel well inside the object (the triangle's centroid sits lower than its box's).
            let y = if o.shape == Shape::Triangle {
                y + (o.size.radius() * 0.2) as usize
            } else {
                y
            };
            let got = &px[(y * SIZE + x) * 3..(y * SIZE + x) * 3 + 3];
            assert_eq!(got, o.colour.rgb(), "scene {i}: {o:?} at ({x}, {y})");
        }
    }
    let flat = Scene {
        objects: vec![],
        background: Background::Flat(77),
    };
    assert!(flat.render().iter().all(|&v| v == 77));
}

#[test]
fn every_scene_has_several_true_references_in_the_vocabulary() {
    let tok = tokenizer();
    for split in [Split::Train, Split::Validation, Split::Test] {
        for i in 0..300 {
            let s = Scene::generate(split, i);
            let refs = references(&s);
            assert!(refs.len() >= 2, "{split:?} {i}: {refs:?}");
            for r in &refs {
                assert!(is_true(r, &s), "{r:?} is not true of {s:?}");
                let ids = tok.encode(r);
                assert!(
                    !ids.contains(&tok.id("<unk>").unwrap()),
                    "{r:?} has a word outside the vocabulary"
                );
                assert_eq!(tok.decode(&ids), *r);
            }
        }
    }
    assert_eq!(
        amad::model::Tokenizer::from_json(&tok.to_json()).unwrap(),
        tok
    );
}

#[test]
fn truth_checks_every_claim() {
    let two = Scene {
        objects: vec![
            obj(Shape::Circle, Colour::Red, Size::Small, 10.0, 30.0),
            obj(Shape::Square, Colour::Blue, Size::Large, 45.0, 32.0),
        ],
        background: Background::Flat(100),
    };
    let yes = [
        "a small red circle left of a large blue square",
        "a large blue square right of a red circle",
        "a red circle and a blue square",
        "a circle",
        "a large square",
    ];
    let no = [
        "a small red circle right of a large blue square", // wrong relation
        "a red circle above a blue square",                // wrong axis
        "a green circle",                                  // wrong colour
        "a large red circle",                              // wrong size
        "two red circles",                                 // wrong count
        "a red circle and a star",                         // a missing object
        "a circle left of a circle",                       // needs two different objects
        "a red",                                           // unparseable
        "a red circle and",                                // unparseable
        "red circle",                                      // no article
        "",
    ];
    for c in yes {
        assert!(is_true(c, &two), "{c:?} should be true");
    }
    for c in no {
        assert!(!is_true(c, &two), "{c:?} should be false");
    }
    let three = Scene {
        objects: vec![
            obj(Shape::Circle, Colour::Red, Size::Small, 10.0, 10.0),
            obj(Shape::Circle, Colour::Red, Size::Large, 40.0, 12.0),
            obj(Shape::Star, Colour::Orange, Size::Small, 20.0, 50.0),
        ],
        background: Background::Flat(100),
    };
    for c in [
        "two red circles",
        "two circles and an orange star",
        "a red circle",
        "an orange star below a large red circle",
    ] {
        assert!(is_true(c, &three), "{c:?} should be true");
    }
    for c in [
        "three red circles",
        "two small red circles",
        "two stars",
        "an orange star above a red circle",
    ] {
        assert!(!is_true(c, &three), "{c:?} should be false");
    }
    assert_eq!(
        truth(
            &["two red circles".into(), "a green star".into()],
            &[three.clone(), three]
        ),
        0.5
    );
}

#[test]
fn export_writes_images_captions_and_the_vocabulary() {
    let dir = std::env::temp_dir().join(format!("amad-export-{}", std::process::id()));
    amad::data::export::export(Split::Test, 5, &dir).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("captions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for (i, line) in lines.iter().enumerate() {
        let scene = Scene::generate(Split::Test, i as u64);
        let file = line["file"].as_str().unwrap();
        let png = std::fs::read(dir.join(file)).unwrap();
        let px = amad::data::image::decode(&png, file).unwrap();
        let rgb: Vec<u8> = px
            .rgba
            .iter()
            .flat_map(|p| p.to_le_bytes()[..3].to_vec())
            .collect();
        assert_eq!(rgb, scene.render(), "{file} is not the rendered scene");
        let refs: Vec<String> = line["references"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(refs, references(&scene));
        assert_eq!(
            line["scene"]["objects"].as_array().unwrap().len(),
            scene.objects.len()
        );
    }
    let tok = amad::model::Tokenizer::from_json(
        &std::fs::read_to_string(dir.join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(tok, tokenizer());
    std::fs::remove_dir_all(dir).ok();
}
