// Run-mode target in Rust: leaks 5 Vec<u8> of 2500 bytes and 4 boxed [u64; 100] (800 bytes).
#[inline(never)]
fn leak_vec() {
    for i in 0..5u8 {
        let v = vec![i; 2500];
        std::mem::forget(std::hint::black_box(v));
    }
}

#[inline(never)]
fn leak_box() {
    for i in 0..4u64 {
        let b: &'static mut [u64; 100] = Box::leak(Box::new([i; 100]));
        std::hint::black_box(b);
    }
}

fn main() {
    leak_vec();
    leak_box();
}
