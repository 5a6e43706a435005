// minkseg view: a small WebGL 2 viewer for scenes exported by minkseg/viz/view.py.
// One classic script, no third-party code, so the bundle opens from file:// and works offline.
// URL fragment: #scene=<id>&layer=<key>[&right=<key>] selects what is shown (and is kept in sync).
(function () {
  'use strict';

  var manifest = window.MINKSEG_MANIFEST;
  var $ = function (id) { return document.getElementById(id); };
  var canvas = $('view');
  var gl = canvas.getContext('webgl2', { antialias: true, preserveDrawingBuffer: true });

  var state = { sceneId: null, scene: null, left: null, right: null, cam: null, idDirty: true, hover: null };

  function status(text) { $('status').textContent = text || ''; $('status').hidden = !text; }

  // ------------------------------------------------------------------ decoding
  function base64Bytes(text) {
    var bin = atob(text), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  var TYPED = { uint8: Uint8Array, int8: Int8Array, uint16: Uint16Array, uint32: Uint32Array, float32: Float32Array };
  function decode(entry) {
    var bytes = base64Bytes(entry.b64gz);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    return new Response(stream).arrayBuffer().then(function (buf) { return new TYPED[entry.dtype](buf); });
  }

  // ------------------------------------------------------------------ matrices (column-major)
  function perspective(fovy, aspect, near, far) {
    var f = 1 / Math.tan(fovy / 2), nf = 1 / (near - far);
    return [f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) * nf, -1, 0, 0, 2 * far * near * nf, 0];
  }
  function sub(a, b) { return [a[0] - b[0], a[1] - b[1], a[2] - b[2]]; }
  function cross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
  function norm(a) { var l = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / l, a[1] / l, a[2] / l]; }
  function dot(a, b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
  function lookAt(eye, target, up) {
    var z = norm(sub(eye, target)), x = norm(cross(up, z)), y = cross(z, x);
    return [x[0], y[0], z[0], 0, x[1], y[1], z[1], 0, x[2], y[2], z[2], 0, -dot(x, eye), -dot(y, eye), -dot(z, eye), 1];
  }
  function mul(a, b) {
    var o = new Array(16);
    for (var c = 0; c < 4; c++) for (var r = 0; r < 4; r++) {
      o[c * 4 + r] = a[r] * b[c * 4] + a[4 + r] * b[c * 4 + 1] + a[8 + r] * b[c * 4 + 2] + a[12 + r] * b[c * 4 + 3];
    }
    return o;
  }

  // ------------------------------------------------------------------ shaders
  var VS = '#version 300 es\n' +
    'in vec3 aPos; in vec3 aNormal; in vec3 aColor;\n' +
    'uniform mat4 uMvp; uniform mat4 uView; uniform vec3 uOrigin; uniform vec3 uScale;\n' +
    'uniform float uPointSize; uniform bool uHasNormals;\n' +
    'out vec3 vColor; flat out vec4 vId;\n' +
    'void main() {\n' +
    '  gl_Position = uMvp * vec4(uOrigin + aPos * uScale, 1.0);\n' +
    '  gl_PointSize = uPointSize;\n' +
    '  float shade = 1.0;\n' +
    '  if (uHasNormals) { vec3 n = normalize(mat3(uView) * aNormal); shade = 0.5 + 0.5 * abs(n.z); }\n' +
    '  vColor = aColor * shade;\n' +
    '  int id = gl_VertexID + 1;\n' +  // 0 = background in the picking pass
    '  vId = vec4(float(id & 255), float((id >> 8) & 255), float((id >> 16) & 255), float((id >> 24) & 255)) / 255.0;\n' +
    '}\n';
  var FS = '#version 300 es\nprecision mediump float;\n' +
    'in vec3 vColor; flat in vec4 vId; uniform bool uPick; out vec4 outColor;\n' +
    'void main() { outColor = uPick ? vId : vec4(vColor, 1.0); }\n';

  function compile(type, src) {
    var s = gl.createShader(type);
    gl.shaderSource(s, src);
    gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
    return s;
  }
  var prog, loc = {};
  function initGl() {
    prog = gl.createProgram();
    gl.attachShader(prog, compile(gl.VERTEX_SHADER, VS));
    gl.attachShader(prog, compile(gl.FRAGMENT_SHADER, FS));
    gl.bindAttribLocation(prog, 0, 'aPos');
    gl.bindAttribLocation(prog, 1, 'aNormal');
    gl.bindAttribLocation(prog, 2, 'aColor');
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
    ['uMvp', 'uView', 'uOrigin', 'uScale', 'uPointSize', 'uHasNormals', 'uPick'].forEach(function (n) {
      loc[n] = gl.getUniformLocation(prog, n);
    });
    gl.enable(gl.DEPTH_TEST);
  }

  // ------------------------------------------------------------------ scene setup
  function buffer(target, data) {
    var b = gl.createBuffer();
    gl.bindBuffer(target, b);
    gl.bufferData(target, data, gl.STATIC_DRAW);
    return b;
  }

  function prepareScene(raw) {
    var jobs = [decode(raw.positions), raw.normals ? decode(raw.normals) : null, raw.faces ? decode(raw.faces) : null];
    raw.layers.forEach(function (l) { jobs.push(decode(l.rgb || l.values)); });
    return Promise.all(jobs).then(function (arr) {
      var s = { raw: raw, n: raw.vertices, layers: {}, order: [], colorBuffers: {} };
      s.vao = gl.createVertexArray();
      gl.bindVertexArray(s.vao);
      buffer(gl.ARRAY_BUFFER, arr[0]);
      gl.enableVertexAttribArray(0);
      gl.vertexAttribPointer(0, 3, gl.UNSIGNED_SHORT, false, 0, 0);
      s.hasNormals = !!arr[1];
      if (arr[1]) {
        buffer(gl.ARRAY_BUFFER, arr[1]);
        gl.enableVertexAttribArray(1);
        gl.vertexAttribPointer(1, 3, gl.BYTE, true, 0, 0);
      }
      if (arr[2]) {
        buffer(gl.ELEMENT_ARRAY_BUFFER, arr[2]);
        s.indexCount = arr[2].length;
        s.indexType = arr[2] instanceof Uint32Array ? gl.UNSIGNED_INT : gl.UNSIGNED_SHORT;
      }
      gl.bindVertexArray(null);
      raw.layers.forEach(function (l, i) {
        var layer = { key: l.key, title: l.title, group: l.group, names: l.names, legend: l.legend,
                      colorbar: l.colorbar, palette: l.palette };
        if (l.rgb) layer.rgb = arr[3 + i]; else layer.values = arr[3 + i];
        s.layers[l.key] = layer;
        s.order.push(l.key);
      });
      // orbit around the bounding-box centre, from a raised corner, the whole box in view
      var lo = raw.origin, size = [raw.scale[0] * 65535, raw.scale[1] * 65535, raw.scale[2] * 65535];
      s.center = [lo[0] + size[0] / 2, lo[1] + size[1] / 2, lo[2] + size[2] / 2];
      s.radius = Math.max(0.5 * Math.hypot(size[0], size[1], size[2]), 1e-3);
      return s;
    });
  }

  function colorBuffer(s, key) {
    if (s.colorBuffers[key]) return s.colorBuffers[key];
    var layer = s.layers[key], rgb = layer.rgb;
    if (!rgb) {
      var p = layer.palette, v = layer.values, flat = new Uint8Array(p.length * 3);
      for (var k = 0; k < p.length; k++) { flat[3 * k] = p[k][0]; flat[3 * k + 1] = p[k][1]; flat[3 * k + 2] = p[k][2]; }
      rgb = new Uint8Array(v.length * 3);
      for (var i = 0; i < v.length; i++) {
        var c = 3 * v[i];
        rgb[3 * i] = flat[c]; rgb[3 * i + 1] = flat[c + 1]; rgb[3 * i + 2] = flat[c + 2];
      }
    }
    s.colorBuffers[key] = buffer(gl.ARRAY_BUFFER, rgb);
    return s.colorBuffers[key];
  }

  function resetCamera() {
    var s = state.scene;
    state.cam = { target: s.center.slice(), dist: s.radius * 2.3, yaw: -0.9, pitch: 0.75 };
    state.idDirty = true;
  }

  // ------------------------------------------------------------------ drawing
  function resize() {
    var dpr = window.devicePixelRatio || 1;
    var w = Math.max(1, Math.round(canvas.clientWidth * dpr)), h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; state.idDirty = true; }
  }

  function matrices(aspect) {
    var c = state.cam, cp = Math.cos(c.pitch);
    var eye = [c.target[0] + c.dist * cp * Math.cos(c.yaw), c.target[1] + c.dist * cp * Math.sin(c.yaw),
               c.target[2] + c.dist * Math.sin(c.pitch)];
    var view = lookAt(eye, c.target, [0, 0, 1]);
    var r = state.scene.radius;
    var proj = perspective(Math.PI / 4, aspect, Math.max(c.dist - 2 * r, c.dist * 1e-3, 1e-3), c.dist + 2 * r);
    return { view: view, mvp: mul(proj, view) };
  }

  function viewports() {
    var w = canvas.width, h = canvas.height;
    if (!state.right) return [[0, 0, w, h, state.left]];
    var half = Math.floor(w / 2);
    return [[0, 0, half, h, state.left], [half, 0, w - half, h, state.right]];
  }

  function drawScene(pick) {
    var s = state.scene, raw = s.raw;
    gl.useProgram(prog);
    gl.uniform3fv(loc.uOrigin, raw.origin);
    gl.uniform3fv(loc.uScale, raw.scale);
    gl.uniform1i(loc.uHasNormals, s.hasNormals ? 1 : 0);
    gl.uniform1i(loc.uPick, pick ? 1 : 0);
    gl.uniform1f(loc.uPointSize, Math.max(2, 2 * (window.devicePixelRatio || 1)));
    gl.enable(gl.SCISSOR_TEST);
    viewports().forEach(function (vp) {
      gl.viewport(vp[0], vp[1], vp[2], vp[3]);
      gl.scissor(vp[0], vp[1], vp[2], vp[3]);
      if (pick) gl.clearColor(0, 0, 0, 0); else gl.clearColor(1, 1, 1, 1);
      gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
      var m = matrices(vp[2] / vp[3]);
      gl.uniformMatrix4fv(loc.uMvp, false, m.mvp);
      gl.uniformMatrix4fv(loc.uView, false, m.view);
      gl.bindVertexArray(s.vao);
      gl.bindBuffer(gl.ARRAY_BUFFER, colorBuffer(s, vp[4]));
      gl.enableVertexAttribArray(2);
      gl.vertexAttribPointer(2, 3, gl.UNSIGNED_BYTE, true, 0, 0);
      if (s.indexCount) gl.drawElements(gl.TRIANGLES, s.indexCount, s.indexType, 0);
      else gl.drawArrays(gl.POINTS, 0, s.n);
      gl.bindVertexArray(null);
    });
    gl.disable(gl.SCISSOR_TEST);
  }

  var frameQueued = false;
  function render() {
    if (frameQueued) return;
    frameQueued = true;
    requestAnimationFrame(function () {
      frameQueued = false;
      if (!state.scene) return;
      resize();
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      drawScene(false);
      document.body.dataset.rendered = state.sceneId + '|' + state.left + '|' + (state.right || '');
    });
  }

  // picking: vertex ids drawn into an offscreen RGBA8 target (for triangles: the provoking vertex)
  var pickFbo = null, pickTex = null, pickDepth = null, pickSize = [0, 0];
  function pickVertex(px, py) {
    if (!state.scene) return -1;
    var w = canvas.width, h = canvas.height;
    if (!pickFbo || pickSize[0] !== w || pickSize[1] !== h) {
      if (pickFbo) { gl.deleteFramebuffer(pickFbo); gl.deleteTexture(pickTex); gl.deleteRenderbuffer(pickDepth); }
      pickFbo = gl.createFramebuffer();
      pickTex = gl.createTexture();
      gl.bindTexture(gl.TEXTURE_2D, pickTex);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, w, h, 0, gl.RGBA, gl.UNSIGNED_BYTE, null);
      pickDepth = gl.createRenderbuffer();
      gl.bindRenderbuffer(gl.RENDERBUFFER, pickDepth);
      gl.renderbufferStorage(gl.RENDERBUFFER, gl.DEPTH_COMPONENT24, w, h);
      gl.bindFramebuffer(gl.FRAMEBUFFER, pickFbo);
      gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, pickTex, 0);
      gl.framebufferRenderbuffer(gl.FRAMEBUFFER, gl.DEPTH_ATTACHMENT, gl.RENDERBUFFER, pickDepth);
      pickSize = [w, h];
      state.idDirty = true;
    }
    gl.bindFramebuffer(gl.FRAMEBUFFER, pickFbo);
    if (state.idDirty) { drawScene(true); state.idDirty = false; }
    var px8 = new Uint8Array(4);
    gl.readPixels(px, py, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px8);
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    return (px8[0] | (px8[1] << 8) | (px8[2] << 16) | (px8[3] << 24)) - 1;
  }

  function describe(key, vertex) {
    var layer = state.scene.layers[key];
    if (layer.rgb) {
      var c = layer.rgb;
      return 'colour rgb(' + c[3 * vertex] + ', ' + c[3 * vertex + 1] + ', ' + c[3 * vertex + 2] + ')';
    }
    var v = layer.values[vertex];
    if (layer.colorbar) {
      var cb = layer.colorbar, value = cb.min + (v / 255) * (cb.max - cb.min);
      return cb.label + ' ≈ ' + value.toPrecision(4);
    }
    return layer.names ? layer.names[v] : String(v);
  }

  function showInfo(ev) {
    if (!state.scene) return;
    var rect = canvas.getBoundingClientRect(), dpr = canvas.width / rect.width;
    var x = Math.floor((ev.clientX - rect.left) * dpr), y = Math.floor((rect.bottom - ev.clientY) * dpr);
    var vertex = pickVertex(x, y), info = $('info');
    if (vertex < 0 || vertex >= state.scene.n) { info.hidden = true; return; }
    var key = (state.right && x >= Math.floor(canvas.width / 2)) ? state.right : state.left;
    info.textContent = state.scene.layers[key].title + ': ' + describe(key, vertex) + '  (vertex ' + vertex + ')';
    info.hidden = false;
  }

  // ------------------------------------------------------------------ panel
  function layerLabel(key) {
    var l = state.scene.layers[key];
    return (l.group === 'input' ? '' : l.group + ' · ') + l.title;
  }

  function buildLayerPanel() {
    var s = state.scene, box = $('layers'), right = $('right'), group = null;
    box.innerHTML = '';
    right.innerHTML = '';
    s.order.forEach(function (key) {
      var l = s.layers[key];
      if (l.group !== group) {
        group = l.group;
        var g = document.createElement('div');
        g.className = 'group';
        g.textContent = group;
        box.appendChild(g);
      }
      var label = document.createElement('label'), input = document.createElement('input');
      input.type = 'radio';
      input.name = 'layer';
      input.value = key;
      input.checked = key === state.left;
      input.addEventListener('change', function () { setLayers(key, state.right); });
      label.appendChild(input);
      label.appendChild(document.createTextNode(' ' + l.title));
      box.appendChild(label);
      var opt = document.createElement('option');
      opt.value = key;
      opt.textContent = layerLabel(key);
      right.appendChild(opt);
    });
  }

  function buildLegend() {
    var layer = state.scene.layers[state.left], box = $('legend');
    box.innerHTML = '';
    if (layer.legend && layer.values) {
      var present = new Uint8Array(layer.palette.length);
      for (var i = 0; i < layer.values.length; i++) present[layer.values[i]] = 1;
      layer.palette.forEach(function (c, k) {
        if (!present[k]) return;
        var item = document.createElement('div'), sw = document.createElement('span');
        item.className = 'item';
        sw.className = 'swatch';
        sw.style.background = 'rgb(' + c[0] + ',' + c[1] + ',' + c[2] + ')';
        item.appendChild(sw);
        item.appendChild(document.createTextNode(layer.names[k]));
        box.appendChild(item);
      });
    }
    var cb = layer.colorbar;
    $('colorbar').hidden = !cb;
    if (cb) {
      var ctx = $('colorbar-canvas').getContext('2d');
      layer.palette.forEach(function (c, k) {
        ctx.fillStyle = 'rgb(' + c[0] + ',' + c[1] + ',' + c[2] + ')';
        ctx.fillRect(k, 0, 1, 12);
      });
      // enough digits that the two ends differ (an untrained head's sigmas span a tiny range)
      var spread = Math.abs(cb.max - cb.min) / (Math.max(Math.abs(cb.max), Math.abs(cb.min)) || 1);
      var digits = Math.min(8, Math.max(3, Math.ceil(-Math.log10(spread || 1e-8)) + 2));
      $('cb-min').textContent = cb.min.toPrecision(digits);
      $('cb-max').textContent = cb.max.toPrecision(digits);
      $('cb-label').textContent = cb.label;
    }
  }

  function writeHash() {
    var h = '#scene=' + encodeURIComponent(state.sceneId) + '&layer=' + encodeURIComponent(state.left);
    if (state.right) h += '&right=' + encodeURIComponent(state.right);
    if (location.hash !== h) history.replaceState(null, '', h);
  }

  function setLayers(left, right) {
    var s = state.scene;
    state.left = s.layers[left] ? left : defaultLayer(s);
    state.right = right && s.layers[right] ? right : null;
    document.body.classList.toggle('split', !!state.right);
    $('split').checked = !!state.right;
    $('right').disabled = !state.right;
    if (state.right) $('right').value = state.right;
    Array.prototype.forEach.call(document.querySelectorAll('#layers input'), function (i) {
      i.checked = i.value === state.left;
    });
    $('caption-left').textContent = layerLabel(state.left);
    $('caption-right').hidden = !state.right;
    if (state.right) $('caption-right').textContent = layerLabel(state.right);
    $('info').hidden = true;
    buildLegend();
    writeHash();
    state.idDirty = true;
    render();
  }

  function defaultLayer(s) {
    for (var i = 0; i < s.order.length; i++) if (/\/semantic$/.test(s.order[i])) return s.order[i];
    return s.layers.gt_semantic ? 'gt_semantic' : s.order[0];
  }

  function parseHash() {
    var out = {};
    location.hash.replace(/^#/, '').split('&').forEach(function (part) {
      var eq = part.indexOf('=');
      if (eq > 0) out[decodeURIComponent(part.slice(0, eq))] = decodeURIComponent(part.slice(eq + 1));
    });
    return out;
  }

  // ------------------------------------------------------------------ scene loading
  var cache = {};
  function sceneEntry(id) {
    for (var i = 0; i < manifest.scenes.length; i++) if (manifest.scenes[i].id === id) return manifest.scenes[i];
    return manifest.scenes[0];
  }

  function loadRaw(entry) {
    var have = window.MINKSEG_SCENES && window.MINKSEG_SCENES[entry.id];
    if (have) return Promise.resolve(have);
    return new Promise(function (resolve, reject) {
      var tag = document.createElement('script');
      tag.src = entry.file;
      tag.onload = function () {
        var raw = window.MINKSEG_SCENES && window.MINKSEG_SCENES[entry.id];
        if (raw) resolve(raw); else reject(new Error(entry.file + ' did not define scene ' + entry.id));
      };
      tag.onerror = function () { reject(new Error('could not load ' + entry.file)); };
      document.head.appendChild(tag);
    });
  }

  function showScene(id, left, right) {
    var entry = sceneEntry(id);
    if (state.sceneId === entry.id && state.scene) { setLayers(left || state.left, right); return; }
    status('loading ' + entry.id + '…');
    state.sceneId = entry.id;
    $('scene').value = entry.id;
    var ready = cache[entry.id] || (cache[entry.id] = loadRaw(entry).then(prepareScene));
    ready.then(function (s) {
      if (state.sceneId !== entry.id) return;
      var keepCamera = state.scene && state.scene.center.join() === s.center.join();
      state.scene = s;
      if (!keepCamera || !state.cam) resetCamera();
      var note = s.raw.note;
      $('note').hidden = !note;
      $('note').textContent = note || '';
      status('');
      buildLayerPanel();
      setLayers(left || state.left, right === undefined ? state.right : right);
    }).catch(function (e) { status('error: ' + e.message); });
  }

  // ------------------------------------------------------------------ interaction
  function bindControls() {
    var drag = null;
    canvas.addEventListener('contextmenu', function (e) { e.preventDefault(); });
    canvas.addEventListener('mousedown', function (e) {
      drag = { x: e.clientX, y: e.clientY, pan: e.button === 2 || e.shiftKey, moved: false };
    });
    window.addEventListener('mouseup', function (e) {
      if (drag && !drag.moved) showInfo(e);
      drag = null;
    });
    window.addEventListener('mousemove', function (e) {
      if (!state.cam) return;
      if (!drag) {
        if (e.target === canvas) {
          state.hover = e;
          if (!state.hoverQueued) {
            state.hoverQueued = true;
            setTimeout(function () { state.hoverQueued = false; showInfo(state.hover); }, 60);
          }
        }
        return;
      }
      var dx = e.clientX - drag.x, dy = e.clientY - drag.y, c = state.cam;
      if (Math.abs(dx) + Math.abs(dy) > 2) drag.moved = true;
      drag.x = e.clientX;
      drag.y = e.clientY;
      if (drag.pan) {
        var k = c.dist * 0.0015, cy = Math.cos(c.yaw), sy = Math.sin(c.yaw), sp = Math.sin(c.pitch);
        // the scene follows the mouse: target -= dx * right + dy * up (screen y grows downwards), with
        // right = (-sin yaw, cos yaw, 0) and up = (-cos yaw sin pitch, -sin yaw sin pitch, cos pitch)
        c.target[0] += k * (dx * sy - dy * cy * sp);
        c.target[1] += k * (-dx * cy - dy * sy * sp);
        c.target[2] += k * dy * Math.cos(c.pitch);
      } else {
        c.yaw -= dx * 0.008;
        c.pitch = Math.min(1.55, Math.max(-1.55, c.pitch + dy * 0.008));
      }
      state.idDirty = true;
      render();
    });
    canvas.addEventListener('wheel', function (e) {
      if (!state.cam) return;
      e.preventDefault();
      state.cam.dist *= Math.exp(e.deltaY * 0.0012);
      state.cam.dist = Math.max(state.cam.dist, state.scene.radius * 0.05);
      state.idDirty = true;
      render();
    }, { passive: false });
    window.addEventListener('keydown', function (e) {
      if ((e.key === 'r' || e.key === 'R') && state.scene && e.target.tagName !== 'SELECT') { resetCamera(); render(); }
    });
    window.addEventListener('resize', render);
    window.addEventListener('hashchange', function () {
      var h = parseHash();
      showScene(h.scene || state.sceneId, h.layer, h.right || null);
    });
    $('scene').addEventListener('change', function () { showScene($('scene').value); });
    $('split').addEventListener('change', function () {
      var other = state.scene.order.filter(function (k) { return k !== state.left; })[0] || state.left;
      setLayers(state.left, $('split').checked ? ($('right').value && $('right').value !== state.left
        ? $('right').value : other) : null);
    });
    $('right').addEventListener('change', function () { setLayers(state.left, $('right').value); });
  }

  function main() {
    if (!manifest || !manifest.scenes.length) { status('no scenes in this bundle (manifest.js missing?)'); return; }
    if (!gl) { status('this browser has no WebGL 2: the viewer needs it'); return; }
    if (typeof DecompressionStream === 'undefined') { status('this browser lacks DecompressionStream; use a current one'); return; }
    document.title = manifest.title;
    $('title').textContent = manifest.title;
    manifest.scenes.forEach(function (sc) {
      var opt = document.createElement('option');
      opt.value = sc.id;
      opt.textContent = sc.id + ' (' + sc.vertices.toLocaleString() + ' vertices)';
      $('scene').appendChild(opt);
    });
    initGl();
    bindControls();
    var h = parseHash();
    showScene(h.scene || manifest.scenes[0].id, h.layer, h.right || null);
  }

  main();
})();
