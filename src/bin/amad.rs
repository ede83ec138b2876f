//! The amad command line.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match cli::run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("amad: {e}");
            1
        }
    };
    std::process::exit(code);
}

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use amad::{Error, Gpu, Result};

    const USAGE: &str = "usage: amad <command>

commands:
  bench kernels [--json] [--iters N]   GFLOP/s of matmul at 512³ and at the teacher's shapes,
                                       and attention forward+backward time
  help                                 this text";

    pub fn run(args: &[String]) -> Result<()> {
        match args.first().map(String::as_str) {
            Some("bench") => match args.get(1).map(String::as_str) {
                Some("kernels") => {
                    let json = args.iter().any(|a| a == "--json");
                    let iters = match args.iter().position(|a| a == "--iters") {
                        Some(i) => args
                            .get(i + 1)
                            .and_then(|v| v.parse().ok())
                            .filter(|&n: &usize| n > 0)
                            .ok_or_else(|| {
                                Error::Invalid("--iters needs a positive number".into())
                            })?,
                        None => 10,
                    };
                    let gpu = pollster::block_on(Gpu::new())?;
                    amad::bench::kernels(&gpu, iters, json)
                }
                _ => Err(Error::Invalid(format!("unknown benchmark; {USAGE}"))),
            },
            Some("help") | Some("--help") | Some("-h") | None => {
                println!("{USAGE}");
                Ok(())
            }
            Some(other) => Err(Error::Invalid(format!(
                "unknown command {other:?}\n{USAGE}"
            ))),
        }
    }
}
