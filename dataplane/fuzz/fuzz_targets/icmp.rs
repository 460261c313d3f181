#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmgate_dataplane::wire::{IcmpEchoRepr, IcmpPacket};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = IcmpPacket::new_checked(data) {
        if let Ok(r) = IcmpEchoRepr::parse(&p) {
            let mut out = data.to_vec();
            r.emit(&mut out);
            assert_eq!(IcmpEchoRepr::parse(&IcmpPacket::new_checked(&out[..]).unwrap()).unwrap(), r);
        }
    }
});
