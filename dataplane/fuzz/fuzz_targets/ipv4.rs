#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmgate_dataplane::wire::{Ipv4Packet, Ipv4Repr};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Ipv4Packet::new_checked(data) {
        let _ = (p.options(), p.payload(), p.is_fragment(), p.frag_offset(), p.verify_checksum());
        if let Ok(r) = Ipv4Repr::parse(&p) {
            assert_eq!(r.payload_len, p.payload().len());
            let mut out = vec![0u8; r.buffer_len() + r.payload_len];
            r.emit(&mut out);
            let q = Ipv4Packet::new_checked(&out[..]).expect("emitted header checks");
            assert_eq!(Ipv4Repr::parse(&q).expect("emitted header parses"), r);
        }
    }
});
