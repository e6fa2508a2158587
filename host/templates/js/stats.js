// The plugin's own logic, free of gantry imports so that plain Node tests it.

/** Lines and words of `text`. @param {string} text */
export function count(text) {
  const lines = text === '' ? 0 : text.replace(/\n$/, '').split('\n').length;
  const words = text.split(/\s+/).filter((w) => w !== '').length;
  return { lines, words };
}
