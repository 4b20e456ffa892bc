/** migrations/*.sql, bundled as text (scripts/build-worker.mjs: loader text; wrangler: its default Text rule for **\/*.sql). */
declare module '*.sql' {
  const text: string;
  export default text;
}
