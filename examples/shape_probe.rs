//! How well a captioner's encoder knows shapes: the measurement behind docs/teacher.md's
//! "Encoder or decoder?".
//!
//! Trains a fresh linear shape head, as `amad train-teacher --shape-loss` does, on the frozen
//! encoder's final states over training scenes. Then, on test scenes, it names each object's shape
//! by the head's majority vote over the cells the object covers most (`Scene::cell_objects`), and
//! for one-object scenes sets beside it the shape word of the model's greedy caption. Where the
//! probe is right and the caption wrong, the encoder's states held the shape and the decoder did
//! not read it; where both are wrong, the encoder's states (linearly) did not hold it.
//!
//! cargo run --release --example shape_probe -- MODEL_DIR [TRAIN_STEPS] [TEST_SCENES]
//! (defaults 300 steps of 32 scenes, 400 test scenes)

use amad::data::scenes::{Scene, Size, Split, SHAPES};
use amad::model::captioner::Captioner;
use amad::model::generate::Generation;
use amad::ops::optim::AdamW;
use amad::train::batch::scene_patches;
use amad::train::{ShapeLoss, ShapeTargets};
use amad::{Gpu, Result, Tensor};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .expect("usage: shape_probe MODEL_DIR [TRAIN_STEPS] [TEST_SCENES]");
    let steps: u32 = args.get(1).map_or(300, |s| s.parse().expect("TRAIN_STEPS"));
    let n_test: usize = args.get(2).map_or(400, |s| s.parse().expect("TEST_SCENES"));
    let gpu = pollster::block_on(Gpu::new())?;
    let c = Captioner::load(&gpu, std::path::Path::new(dir))?;
    let e = &c.model.cfg.encoder;
    let head = ShapeLoss::new(
        &gpu,
        e,
        ShapeTargets {
            weight: 1.0,
            cells: 1,
        },
        7,
    )?;
    let cfg = AdamW {
        lr: 3e-3,
        ..AdamW::default()
    };
    let batch = 32;
    for t in 0..steps {
        let scenes: Vec<Scene> = (0..batch)
            .map(|i| Scene::generate(Split::Train, (t as usize * batch + i) as u64))
            .collect();
        let patches = scene_patches(&gpu, &scenes, &c.preprocess)?;
        let labels = Tensor::from_u32(&gpu, &[batch * e.tokens()], &head.labels(&scenes))?;
        let mut st = gpu.step();
        let states = c.model.encode(&mut st, &patches)?.states;
        let (loss, _) = head.record(&mut st, &states, &labels)?;
        head.update(&mut st, &cfg, t + 1)?;
        st.submit()?;
        if (t + 1) % 50 == 0 {
            let l = pollster::block_on(loss.read(&gpu))?[0];
            eprintln!("probe step {}/{steps}: loss {l:.4} nats per cell", t + 1);
        }
    }

    // Per object: [probe right, objects], by size (small, large) and by object count (1, 2, 3).
    let (mut by_size, mut by_count) = ([[0usize; 2]; 2], [[0usize; 2]; 3]);
    // One-object scenes: [probe right & caption right, probe right only, caption right only, neither].
    let mut single = [0usize; 4];
    // Per object: [its shape][the probe's vote] (the last column: "none").
    let mut confusion = [[0usize; SHAPES.len() + 1]; SHAPES.len()];
    let grid = e.image_size / e.patch_size;
    for start in (0..n_test).step_by(50) {
        let scenes: Vec<Scene> = (start..(start + 50).min(n_test))
            .map(|i| Scene::generate(Split::Test, i as u64))
            .collect();
        let patches = scene_patches(&gpu, &scenes, &c.preprocess)?;
        let mut st = gpu.step();
        let states = c.model.encode(&mut st, &patches)?.states;
        let rows = states.reshape(&[scenes.len() * e.tokens(), e.hidden_size])?;
        let logits = head.logits(&mut st, &rows)?;
        st.submit()?;
        let logits = pollster::block_on(logits.read(&gpu))?;
        let captions = pollster::block_on(c.model.generate(&gpu, &patches, Generation::default()))?;
        for (si, scene) in scenes.iter().enumerate() {
            let cells = scene.cell_objects(grid);
            let first = si * e.tokens() + 1; // the CLS token comes first
            let mut votes = vec![[0usize; SHAPES.len() + 1]; scene.objects.len()];
            for (ci, owner) in cells.iter().enumerate() {
                if let Some(o) = owner {
                    let row = &logits[(first + ci) * (SHAPES.len() + 1)..][..SHAPES.len() + 1];
                    let best = (0..row.len())
                        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                        .unwrap();
                    votes[*o][best] += 1;
                }
            }
            let caption = c.tokenizer.decode(&captions[si]);
            for (oi, o) in scene.objects.iter().enumerate() {
                let v = &votes[oi];
                if v.iter().sum::<usize>() == 0 {
                    continue; // covers no cell most: too occluded to vote on
                }
                let named = (0..v.len()).max_by_key(|&k| v[k]).unwrap();
                let right = named < SHAPES.len() && SHAPES[named] == o.shape;
                let truth = SHAPES.iter().position(|&s| s == o.shape).unwrap();
                confusion[truth][named] += 1;
                let size = usize::from(o.size == Size::Large);
                by_size[size][0] += right as usize;
                by_size[size][1] += 1;
                let count = scene.objects.len() - 1;
                by_count[count][0] += right as usize;
                by_count[count][1] += 1;
                if scene.objects.len() == 1 {
                    let said = caption
                        .split(' ')
                        .find_map(|w| SHAPES.iter().find(|s| w.starts_with(s.word())));
                    let caption_right = said == Some(&o.shape);
                    single[match (right, caption_right) {
                        (true, true) => 0,
                        (true, false) => 1,
                        (false, true) => 2,
                        (false, false) => 3,
                    }] += 1;
                }
            }
        }
    }
    let pct = |x: [usize; 2]| {
        format!(
            "{}/{} ({:.1}%)",
            x[0],
            x[1],
            100.0 * x[0] as f64 / x[1] as f64
        )
    };
    println!("model: {dir}; probe: {steps} steps of {batch} training scenes; {n_test} test scenes");
    println!("probe names the shape, small objects: {}", pct(by_size[0]));
    println!("probe names the shape, large objects: {}", pct(by_size[1]));
    for (k, x) in by_count.iter().enumerate() {
        println!(
            "probe names the shape, {}-object scenes: {}",
            k + 1,
            pct(*x)
        );
    }
    println!(
        "one-object scenes: both right {}, probe only {}, caption only {}, neither {}",
        single[0], single[1], single[2], single[3]
    );
    let names: Vec<&str> = SHAPES.iter().map(|s| s.word()).chain(["none"]).collect();
    println!("confusion (rows: the object's shape; columns: the probe's vote)");
    println!(
        "{:>10} {}",
        "",
        names.iter().map(|n| format!("{n:>9}")).collect::<String>()
    );
    for (i, row) in confusion.iter().enumerate() {
        let cells: String = row.iter().map(|c| format!("{c:>9}")).collect();
        println!("{:>10} {cells}", names[i]);
    }
    Ok(())
}
