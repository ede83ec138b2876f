//! Procedural scenes: 64×64 RGB images of 1–3 objects (5 shapes, 8 colours, 2 sizes) on a flat,
//! gradient or noise background, each with its scene graph. Deterministic from (split, index) and
//! unlimited; the splits draw from disjoint seed streams.

use crate::rng::Rng;

pub const SIZE: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Diamond,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Colour {
    Red,
    Orange,
    Yellow,
    Green,
    Cyan,
    Blue,
    Purple,
    Pink,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    Small,
    Large,
}

pub const SHAPES: [Shape; 5] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Star,
    Shape::Diamond,
];
pub const COLOURS: [Colour; 8] = [
    Colour::Red,
    Colour::Orange,
    Colour::Yellow,
    Colour::Green,
    Colour::Cyan,
    Colour::Blue,
    Colour::Purple,
    Colour::Pink,
];
pub const SIZES: [Size; 2] = [Size::Small, Size::Large];

impl Shape {
    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Diamond => "diamond",
        }
    }
    pub fn plural(self) -> String {
        format!("{}s", self.word())
    }
}

impl Colour {
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Orange => "orange",
            Colour::Yellow => "yellow",
            Colour::Green => "green",
            Colour::Cyan => "cyan",
            Colour::Blue => "blue",
            Colour::Purple => "purple",
            Colour::Pink => "pink",
        }
    }
    /// Saturated colours, all far from the grey backgrounds.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 30],
            Colour::Orange => [245, 140, 20],
            Colour::Yellow => [240, 230, 40],
            Colour::Green => [40, 180, 50],
            Colour::Cyan => [40, 220, 230],
            Colour::Blue => [40, 70, 220],
            Colour::Purple => [140, 50, 190],
            Colour::Pink => [250, 120, 190],
        }
    }
}

impl Size {
    pub fn word(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
    /// Radius in pixels.
    pub fn radius(self) -> f32 {
        match self {
            Size::Small => 6.0,
            Size::Large => 11.0,
        }
    }
}

/// One object: what it is and where its centre is (pixels, y down).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    pub x: f32,
    pub y: f32,
}

/// Where `a` is relative to `b`, along the axis on which they are furthest apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

impl Relation {
    pub fn words(self) -> &'static str {
        match self {
            Relation::LeftOf => "left of",
            Relation::RightOf => "right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }
    pub fn of(a: &Object, b: &Object) -> Relation {
        let (dx, dy) = (a.x - b.x, a.y - b.y);
        if dx.abs() >= dy.abs() {
            if dx < 0.0 {
                Relation::LeftOf
            } else {
                Relation::RightOf
            }
        } else if dy < 0.0 {
            Relation::Above
        } else {
            Relation::Below
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Background {
    Flat(u8),
    /// From one grey to another, horizontally or vertically.
    Gradient {
        from: u8,
        to: u8,
        horizontal: bool,
    },
    /// Grey noise around a level, seeded.
    Noise {
        level: u8,
        seed: u64,
    },
}

/// A scene and its graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub objects: Vec<Object>,
    pub background: Background,
}

/// The fixed splits; each draws scenes from its own seed stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub fn parse(s: &str) -> Option<Split> {
        match s {
            "train" => Some(Split::Train),
            "validation" | "val" => Some(Split::Validation),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
    /// The split's name, as `parse` reads it.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
    fn stream(self) -> u64 {
        match self {
            Split::Train => 0x7261_696e,
            Split::Validation => 0x7661_6c69,
            Split::Test => 0x7465_7374,
        }
    }
}

impl Scene {
    /// Scene `index` of `split`: the same scene every time.
    pub fn generate(split: Split, index: u64) -> Scene {
        let mut rng = Rng::new(
            split.stream().wrapping_mul(0x100_0000_01b3)
                ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let background = match rng.below(3) {
            0 => Background::Flat(60 + rng.below(120) as u8),
            1 => Background::Gradient {
                from: 50 + rng.below(60) as u8,
                to: 120 + rng.below(60) as u8,
                horizontal: rng.below(2) == 0,
            },
            _ => Background::Noise {
                level: 80 + rng.below(80) as u8,
                seed: rng.next_u64(),
            },
        };
        let count = 1 + rng.below(3);
        let mut objects: Vec<Object> = vec![];
        // Three objects are often two of a kind, so that counts ("two red circles") occur.
        let twin = count >= 2 && rng.below(3) == 0;
        'place: while objects.len() < count {
            let (shape, colour) = if twin && objects.len() == 1 {
                (objects[0].shape, objects[0].colour)
            } else {
                (SHAPES[rng.below(5)], COLOURS[rng.below(8)])
            };
            let size = SIZES[rng.below(2)];
            let r = size.radius();
            for _ in 0..200 {
                let x = r + 1.0 + rng.unit() as f32 * (SIZE as f32 - 2.0 * r - 2.0);
                let y = r + 1.0 + rng.unit() as f32 * (SIZE as f32 - 2.0 * r - 2.0);
                let cand = Object {
                    shape,
                    colour,
                    size,
                    x,
                    y,
                };
                // Apart (no overlap), and clearly apart along one axis so that relations are plain.
                let clear = objects.iter().all(|o| {
                    let (dx, dy) = ((o.x - x).abs(), (o.y - y).abs());
                    dx.max(dy) >= o.size.radius() + r + 3.0 && dx.max(dy) >= 1.5 * dx.min(dy)
                });
                if clear {
                    objects.push(cand);
                    continue 'place;
                }
            }
            // No room left: keep the scene smaller rather than overlap.
            break;
        }
        Scene {
            objects,
            background,
        }
    }

    /// RGB pixels [SIZE, SIZE, 3], anti-aliased with 4×4 samples per pixel.
    pub fn render(&self) -> Vec<u8> {
        let mut out = vec![0u8; SIZE * SIZE * 3];
        let noise = |seed: u64, x: usize, y: usize| -> i32 {
            let mut r =
                Rng::new(seed ^ ((y * SIZE + x) as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            r.below(41) as i32 - 20
        };
        for py in 0..SIZE {
            for px in 0..SIZE {
                let bg = match self.background {
                    Background::Flat(g) => g as f32,
                    Background::Gradient {
                        from,
                        to,
                        horizontal,
                    } => {
                        let t = if horizontal { px } else { py } as f32 / (SIZE - 1) as f32;
                        from as f32 + t * (to as f32 - from as f32)
                    }
                    Background::Noise { level, seed } => {
                        (level as i32 + noise(seed, px, py)).clamp(0, 255) as f32
                    }
                };
                let mut acc = [0.0f32; 3];
                for sy in 0..4 {
                    for sx in 0..4 {
                        let (x, y) = (
                            px as f32 + (sx as f32 + 0.5) / 4.0,
                            py as f32 + (sy as f32 + 0.5) / 4.0,
                        );
                        // Later objects are drawn over earlier ones (they never overlap anyway).
                        let hit = self.objects.iter().rev().find(|o| inside(o, x, y));
                        let c = hit.map_or([bg; 3], |o| o.colour.rgb().map(|v| v as f32));
                        for k in 0..3 {
                            acc[k] += c[k] / 16.0;
                        }
                    }
                }
                for k in 0..3 {
                    out[(py * SIZE + px) * 3 + k] = acc[k].round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        out
    }

    /// Per cell of a grid × grid division of the image, row by row: the index in SHAPES of the
    /// object that covers most of the cell (see [`Scene::cell_objects`]), or SHAPES.len()
    /// ("none"). The labels of `amad train-teacher --shape-loss`.
    pub fn cell_shapes(&self, grid: usize) -> Vec<u32> {
        self.cell_objects(grid)
            .into_iter()
            .map(|o| match o {
                Some(i) => SHAPES
                    .iter()
                    .position(|&s| s == self.objects[i].shape)
                    .unwrap() as u32,
                None => SHAPES.len() as u32,
            })
            .collect()
    }

    /// Per cell of a grid × grid division of the image, row by row: the index in `objects` of the
    /// object that covers most of the cell, or `None` when none covers an eighth of it. Sampled
    /// at n × n points per cell, n = SIZE / grid within 1..=8: each pixel's centre for cells of up
    /// to 8 pixels (the cost per scene stays that of its pixels), 8 × 8 points for larger ones.
    pub fn cell_objects(&self, grid: usize) -> Vec<Option<usize>> {
        let cell = SIZE as f32 / grid as f32;
        let n = (SIZE / grid.max(1)).clamp(1, 8);
        let mut out = vec![];
        for gy in 0..grid {
            for gx in 0..grid {
                let mut counts = vec![0usize; self.objects.len()];
                for sy in 0..n {
                    for sx in 0..n {
                        let x = (gx as f32 + (sx as f32 + 0.5) / n as f32) * cell;
                        let y = (gy as f32 + (sy as f32 + 0.5) / n as f32) * cell;
                        if let Some(i) = self.objects.iter().position(|o| inside(o, x, y)) {
                            counts[i] += 1;
                        }
                    }
                }
                let best = (0..counts.len()).max_by_key(|&i| counts[i]);
                out.push(best.filter(|&i| 8 * counts[i] >= n * n));
            }
        }
        out
    }
}

/// Whether (x, y) is inside object `o`.
pub fn inside(o: &Object, x: f32, y: f32) -> bool {
    let r = o.size.radius();
    let (dx, dy) = (x - o.x, y - o.y);
    match o.shape {
        Shape::Circle => dx * dx + dy * dy <= r * r,
        Shape::Square => dx.abs() <= 0.85 * r && dy.abs() <= 0.85 * r,
        Shape::Diamond => dx.abs() + dy.abs() <= r,
        Shape::Triangle => {
            // Pointing up: apex at -r, base at +0.6r, half-width r at the base.
            let t = (dy + r) / (1.6 * r);
            (0.0..=1.0).contains(&t) && dx.abs() <= t * r
        }
        Shape::Star => {
            // Five points: the boundary radius swings between r and 0.45r with the angle.
            let d = (dx * dx + dy * dy).sqrt();
            if d > r {
                return false;
            }
            let a = dy.atan2(dx) + std::f32::consts::FRAC_PI_2;
            let sector = std::f32::consts::TAU / 5.0;
            let f = ((a.rem_euclid(sector)) / sector - 0.5).abs() * 2.0; // 1 at a point, 0 between
            d <= 0.45 * r + (r - 0.45 * r) * f
        }
    }
}
