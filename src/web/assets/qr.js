"use strict";
// A small QR code encoder (ISO/IEC 18004): byte mode, error correction level
// M, versions 1-10 (up to 213 bytes: a `tailscale up --login-server ...
// --authkey ...` line fits), fixed mask 0. Returns rows of booleans (true =
// dark) or null when the text is too long.
function qrEncode(text) {
  const data = Array.from(new TextEncoder().encode(text));
  // Error correction codewords per block and blocks, level M, versions 1..10.
  const ECC = [0, 10, 16, 26, 18, 24, 16, 18, 22, 22, 26];
  const BLOCKS = [0, 1, 1, 1, 2, 2, 4, 4, 4, 5, 5];
  const rawModules = (v) => {
    let r = (16 * v + 128) * v + 64;
    if (v >= 2) {
      const n = Math.floor(v / 7) + 2;
      r -= (25 * n - 10) * n - 55;
      if (v >= 7) r -= 36;
    }
    return r;
  };
  const dataCodewords = (v) => Math.floor(rawModules(v) / 8) - ECC[v] * BLOCKS[v];
  let ver = 1;
  for (; ver <= 10; ver++) {
    const countBits = ver < 10 ? 8 : 16;
    if (4 + countBits + data.length * 8 <= dataCodewords(ver) * 8) break;
  }
  if (ver > 10) return null;
  // Bit stream: mode 0100, count, bytes, terminator, padding.
  const bits = [];
  const put = (v, n) => { for (let i = n - 1; i >= 0; i--) bits.push((v >>> i) & 1); };
  put(4, 4);
  put(data.length, ver < 10 ? 8 : 16);
  data.forEach((b) => put(b, 8));
  const cap = dataCodewords(ver) * 8;
  put(0, Math.min(4, cap - bits.length));
  put(0, (8 - (bits.length % 8)) % 8);
  for (let p = 0xec; bits.length < cap; p ^= 0xec ^ 0x11) put(p, 8);
  const cw = [];
  for (let i = 0; i < bits.length; i += 8) cw.push(parseInt(bits.slice(i, i + 8).join(""), 2));
  // Reed-Solomon over GF(256), polynomial 0x11d.
  const mul = (x, y) => {
    let z = 0;
    for (let i = 7; i >= 0; i--) {
      z = (z << 1) ^ ((z >>> 7) * 0x11d);
      z ^= ((y >>> i) & 1) * x;
    }
    return z;
  };
  const deg = ECC[ver];
  const div = new Array(deg).fill(0);
  div[deg - 1] = 1;
  for (let i = 0, root = 1; i < deg; i++, root = mul(root, 2)) {
    for (let j = 0; j < deg; j++) {
      div[j] = mul(div[j], root);
      if (j + 1 < deg) div[j] ^= div[j + 1];
    }
  }
  const rem = (d) => {
    const r = new Array(deg).fill(0);
    d.forEach((b) => {
      const f = b ^ r.shift();
      r.push(0);
      div.forEach((c, i) => { r[i] ^= mul(c, f); });
    });
    return r;
  };
  // Blocks (short ones first), each followed by its ECC, then interleaved.
  const nb = BLOCKS[ver], raw = Math.floor(rawModules(ver) / 8);
  const nShort = nb - (raw % nb), shortLen = Math.floor(raw / nb);
  const blocks = [];
  for (let i = 0, k = 0; i < nb; i++) {
    const len = shortLen - deg + (i < nShort ? 0 : 1);
    const d = cw.slice(k, k + len);
    k += len;
    const e = rem(d);
    if (i < nShort) d.push(-1);
    blocks.push(d.concat(e));
  }
  const all = [];
  for (let i = 0; i < blocks[0].length; i++)
    blocks.forEach((b) => { if (b[i] !== -1) all.push(b[i]); });
  // Modules and the function patterns.
  const size = ver * 4 + 17;
  const m = [], fn = [];
  for (let y = 0; y < size; y++) { m.push(new Array(size).fill(false)); fn.push(new Array(size).fill(false)); }
  const set = (x, y, dark) => { m[y][x] = dark; fn[y][x] = true; };
  for (let i = 0; i < size; i++) { set(6, i, i % 2 === 0); set(i, 6, i % 2 === 0); }
  const finder = (cx, cy) => {
    for (let dy = -4; dy <= 4; dy++)
      for (let dx = -4; dx <= 4; dx++) {
        const d = Math.max(Math.abs(dx), Math.abs(dy)), x = cx + dx, y = cy + dy;
        if (x >= 0 && x < size && y >= 0 && y < size) set(x, y, d !== 2 && d !== 4);
      }
  };
  finder(3, 3); finder(size - 4, 3); finder(3, size - 4);
  if (ver > 1) {
    const n = Math.floor(ver / 7) + 2;
    const step = Math.ceil((ver * 4 + 4) / (n * 2 - 2)) * 2;
    const pos = [6];
    for (let p = size - 7; pos.length < n; p -= step) pos.splice(1, 0, p);
    pos.forEach((ax, i) => pos.forEach((ay, j) => {
      if ((i === 0 && j === 0) || (i === 0 && j === n - 1) || (i === n - 1 && j === 0)) return;
      for (let dy = -2; dy <= 2; dy++)
        for (let dx = -2; dx <= 2; dx++) set(ax + dx, ay + dy, Math.max(Math.abs(dx), Math.abs(dy)) !== 1);
    }));
  }
  // Format bits: level M (00), mask 0, BCH(15,5), XOR 0x5412.
  let r = 0;
  for (let i = 0; i < 10; i++) r = (r << 1) ^ ((r >>> 9) * 0x537);
  const fmt = (r & 0x3ff) ^ 0x5412;
  const bit = (v, i) => ((v >>> i) & 1) !== 0;
  for (let i = 0; i <= 5; i++) set(8, i, bit(fmt, i));
  set(8, 7, bit(fmt, 6)); set(8, 8, bit(fmt, 7)); set(7, 8, bit(fmt, 8));
  for (let i = 9; i < 15; i++) set(14 - i, 8, bit(fmt, i));
  for (let i = 0; i < 8; i++) set(size - 1 - i, 8, bit(fmt, i));
  for (let i = 8; i < 15; i++) set(8, size - 15 + i, bit(fmt, i));
  set(8, size - 8, true);
  if (ver >= 7) {
    let v = ver;
    for (let i = 0; i < 12; i++) v = (v << 1) ^ ((v >>> 11) * 0x1f25);
    const vb = (ver << 12) | v;
    for (let i = 0; i < 18; i++) {
      const a = size - 11 + (i % 3), b = Math.floor(i / 3);
      set(a, b, bit(vb, i)); set(b, a, bit(vb, i));
    }
  }
  // Data in the zigzag, mask 0 ((x + y) even) applied as it goes.
  let i = 0;
  for (let right = size - 1; right >= 1; right -= 2) {
    if (right === 6) right = 5;
    for (let vert = 0; vert < size; vert++)
      for (let j = 0; j < 2; j++) {
        const x = right - j, up = ((right + 1) & 2) === 0, y = up ? size - 1 - vert : vert;
        if (fn[y][x]) continue;
        let dark = i < all.length * 8 && bit(all[i >>> 3], 7 - (i & 7));
        i++;
        if ((x + y) % 2 === 0) dark = !dark;
        m[y][x] = dark;
      }
  }
  return m;
}

// Draws a QR code on a canvas with a 4-module quiet zone.
function qrDraw(canvas, rows, scale) {
  const n = rows.length + 8;
  canvas.width = canvas.height = n * scale;
  const c = canvas.getContext("2d");
  c.fillStyle = "#fff";
  c.fillRect(0, 0, n * scale, n * scale);
  c.fillStyle = "#000";
  rows.forEach((row, y) => row.forEach((d, x) => { if (d) c.fillRect((x + 4) * scale, (y + 4) * scale, scale, scale); }));
}
