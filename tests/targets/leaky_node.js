// A Node.js service leaking through a native path: stashUpload keeps every request's
// Buffer (allocated with malloc by Node's ArrayBuffer allocator); handleRead's buffers are
// dropped and collected. Run with --perf-basic-prof --interpreted-frames-native-stack so
// the JavaScript functions appear in native stacks. With --expose-gc it collects garbage
// every 500 ms, so that handleRead's dropped Buffers are freed within a short trace (V8
// collects them lazily otherwise, and uncollected garbage is memory still held).
'use strict';
const kept = [];

function stashUpload(i) {
  const payload = Buffer.allocUnsafeSlow(16 * 1024);
  payload[0] = i & 0xff;
  kept.push(payload);
}

function handleRead(i) {
  const scratch = Buffer.allocUnsafeSlow(16 * 1024);
  scratch[0] = i & 0xff;
  return scratch[0];
}

const seconds = Number(process.argv[2] || 3600);
const deadline = Date.now() + seconds * 1000;
let i = 0;
if (global.gc) setInterval(() => global.gc(), 500);
console.log('ready');
const timer = setInterval(() => {
  for (let k = 0; k < 10; k++) {
    stashUpload(i);
    handleRead(i);
    i++;
  }
  if (Date.now() > deadline) clearInterval(timer);
}, 100);
