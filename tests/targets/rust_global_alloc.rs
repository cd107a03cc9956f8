// Run-mode target: a Rust program with its own #[global_allocator] (counting, over System).
// leak_boxes leaks 20 boxed slices of 1000 bytes; churn allocates and drops.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[inline(never)]
fn leak_boxes() {
    for _ in 0..20 {
        let block = vec![1u8; 1000].into_boxed_slice();
        std::hint::black_box(Box::leak(block));
    }
}

#[inline(never)]
fn churn() {
    for i in 0..200 {
        std::hint::black_box(vec![i as u8; 64]);
    }
}

fn main() {
    leak_boxes();
    churn();
    println!("{}", ALLOCATED.load(Ordering::Relaxed));
}
