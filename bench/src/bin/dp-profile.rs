//! Runs one data-plane path for a fixed number of bursts, for instruction counting under
//! callgrind (repeatable where timings are not):
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='swarmgate_bench::Workload::process' \
//!     target/release/dp-profile vxlan_encap 64 2000
//! ```
//!
//! Only `Workload::process` (the pipeline over already-filled buffers) is counted; divide
//! the total by the packet count printed at the end.

use swarmgate_bench::{touch, Path, Workload};
use swarmgate_dataplane::{Next, BURST};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: dp-profile <vxlan_encap|vxlan_decap|vxlan_encap_esp|esp_vxlan_decap|maglev_dnat_encap|routed_vip_dnat|published_dnat> <inner-bytes> <bursts>";
    if args.len() != 4 {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let Some(path) = Path::from_name(&args[1]) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let (Ok(size), Ok(bursts)) = (args[2].parse::<usize>(), args[3].parse::<usize>()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    if !(64..=1464).contains(&size) {
        eprintln!("inner frame size must be 64..=1464");
        std::process::exit(2);
    }
    let mut w = Workload::new(path, size);
    let mut bufs = Workload::buffers(BURST);
    let mut next = vec![Next::Exception; BURST];
    let mut sum = 0usize;
    for _ in 0..bursts {
        w.refill(&mut bufs);
        w.process(&mut bufs, &mut next);
        w.check(&next);
        sum += touch(&bufs);
    }
    println!(
        "{} {}B: {} packets, {} output bytes",
        path.name(),
        size,
        bursts * BURST,
        sum
    );
}
