#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmgate_dataplane::wire::esp::{parse_trailer, EspPacket};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = EspPacket::new_checked(data) {
        let _ = (p.spi(), p.seq(), p.check_gcm_len(8), p.check_gcm_len(16));
    }
    if let Ok((len, _)) = parse_trailer(data) {
        assert!(len + 2 <= data.len());
    }
});
