/** casa's version; a unit test checks it matches package.json. */
export const VERSION = '0.1.0';
