fn main() {
    let gpu = pollster::block_on(amad::Gpu::new()).unwrap();
    println!("{}", gpu.describe());
    for &(m, n, k) in &[(512usize, 512usize, 512usize), (1024, 1024, 1024)] {
        for (ta, tb) in [(false, false), (true, false), (false, true)] {
            let a = amad::Tensor::from_slice(&gpu, &[m, k], &vec![0.5; m * k]).unwrap();
            let b = amad::Tensor::from_slice(&gpu, &[k, n], &vec![0.25; k * n]).unwrap();
            let run = |iters: usize| {
                let mut s = gpu.step();
                for _ in 0..iters {
                    let _ = amad::ops::matmul::matmul(&mut s, &a, &b, ta, tb, None).unwrap();
                }
                s.submit().unwrap();
                gpu.wait_idle().unwrap();
            };
            run(1);
            let t = std::time::Instant::now();
            let it = 5;
            run(it);
            let dt = t.elapsed().as_secs_f64() / it as f64;
            println!("{m}x{n}x{k} ta={ta} tb={tb}: {:.2} ms {:.1} GFLOP/s", dt * 1e3, 2.0 * (m * n * k) as f64 / dt / 1e9);
        }
    }
}
