/**
 * The writer thread of src/sync/file-writer.ts: takes the file descriptor to
 * write to ({ fd }), then writes the slices of each window it is sent, in
 * the order sent, with pwrite, and hands the window back. After a failure it
 * writes nothing more; every window still comes back.
 */
import { writeSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';

let fd = -1;
let failed = false;

parentPort!.on('message', (msg: { fd: number } | { buffer: ArrayBuffer; slices: Float64Array }) => {
  if ('fd' in msg) {
    fd = msg.fd;
    return;
  }
  const view = new Uint8Array(msg.buffer);
  let error: { code?: string; message: string } | undefined;
  if (!failed) {
    try {
      const s = msg.slices;
      for (let i = 0; i < s.length; i += 3) {
        const [offset, length, position] = [s[i]!, s[i + 1]!, s[i + 2]!];
        for (let done = 0; done < length; ) {
          const n = writeSync(fd, view, offset + done, length - done, position + done);
          if (n <= 0) throw new Error('a write to the restored file wrote nothing');
          done += n;
        }
      }
    } catch (err) {
      failed = true;
      error = { code: (err as NodeJS.ErrnoException).code, message: (err as Error).message };
    }
  }
  parentPort!.postMessage({ buffer: msg.buffer, error }, [msg.buffer]);
});
