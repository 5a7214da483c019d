//! Admin request decoding (`ctl::proto::read_frame`) and, for what decodes, applying it to an
//! in-memory director with the daemon's own `apply`: never a panic, and a refused request
//! leaves the state unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uvs::ctl::backend::{Backend, MemoryBackend};
use uvs::ctl::proto::{MAX_REQUEST, Reply, Request, read_frame};

fuzz_target!(|data: &[u8]| {
    // As the daemon sees it: a length prefix and JSON.
    let mut r = data;
    let _ = read_frame::<Request>(&mut r, MAX_REQUEST);
    // The JSON alone with a correct prefix, so the decoder is exercised past the length.
    let mut framed = (data.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(data);
    let Ok(req) = read_frame::<Request>(&mut framed.as_slice(), MAX_REQUEST) else {
        return;
    };
    let mut b = MemoryBackend::default();
    let before = format!("{:?}", b.call(&Request::Status).unwrap());
    let reply = b.call(&req).unwrap();
    if let Reply::Refused(_) = reply {
        assert_eq!(format!("{:?}", b.call(&Request::Status).unwrap()), before);
    }
    // A second application of the same request must not panic either.
    let _ = b.call(&req);
});
