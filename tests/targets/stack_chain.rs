// Stack-quality target (Rust): main → handle_request → parse_body → store_record → the
// allocator (a String and a Vec), 50 of each kept.
#[inline(never)]
fn store_record(i: usize, kept: &mut Vec<String>) {
    kept.push("x".repeat(100 + i));
}

#[inline(never)]
fn parse_body(i: usize, kept: &mut Vec<String>, vectors: &mut Vec<Vec<u64>>) {
    store_record(i, kept);
    vectors.push(vec![i as u64; 50 + i]);
}

#[inline(never)]
fn handle_request(i: usize, kept: &mut Vec<String>, vectors: &mut Vec<Vec<u64>>) {
    parse_body(i, kept, vectors);
    std::hint::black_box(&kept);
}

fn main() {
    let mut kept = Vec::with_capacity(100);
    let mut vectors = Vec::with_capacity(100);
    for i in 0..50 {
        handle_request(i, &mut kept, &mut vectors);
    }
    std::mem::forget(kept);
    std::mem::forget(vectors);
}
