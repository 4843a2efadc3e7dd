// polynl-serve demo page: pick images, send them to the public API, draw the answers.
//
// Where it sits: a client of the API, nothing more. It POSTs the images as multipart
// (`file`, or repeated `files`) to detect-faces and classify with the user's API key, then
// draws each face's box, score and landmarks on a canvas that holds the image at its full
// size, so the API's pixel coordinates (original image, after EXIF orientation) are drawn
// as they are and CSS only scales the display.
//
// For tests and curious readers the DOM says what happened: each result card carries
// data-face-count (boxes drawn) and data-boxes (their coordinates in original pixels);
// #results counts finished runs in data-detect-runs / data-classify-runs; #error carries
// data-status and data-code of the last API error.
"use strict";

(() => {
  const DEBOUNCE_MS = 300;
  const FACE_COLOUR = "#00c853";
  const LANDMARK_COLOURS = ["#2979ff", "#2979ff", "#ffab00", "#ff1744", "#ff1744"];
  const LANDMARK_NAMES = ["left_eye", "right_eye", "nose", "left_mouth", "right_mouth"];
  const KEY_STORAGE = "polynl-demo-api-key";

  // Where the API is: the page's own server, or the one its <meta name="polynl-api-base"> names.
  const API_BASE = new URL(
    document.querySelector('meta[name="polynl-api-base"]')?.content || ".",
    document.baseURI,
  );
  const apiUrl = (path) => new URL(path, API_BASE).href;

  const $ = (id) => document.getElementById(id);
  const els = {
    key: $("api-key"),
    drop: $("drop-zone"),
    fileInput: $("file-input"),
    samples: $("sample-list"),
    detectOn: $("detect-on"),
    score: $("score-threshold"),
    scoreValue: $("score-threshold-value"),
    iou: $("nms-iou"),
    iouValue: $("nms-iou-value"),
    classifyOn: $("classify-on"),
    topK: $("top-k"),
    topKValue: $("top-k-value"),
    rerun: $("rerun"),
    error: $("error"),
    detectMeta: $("detect-meta"),
    classifyMeta: $("classify-meta"),
    results: $("results"),
    template: $("result-template"),
  };

  // images: [{file: File, bitmap: ImageBitmap|null, card: HTMLElement}]
  const state = { images: [], inFlight: { detect: null, classify: null }, errors: {} };

  // --- API calls ---------------------------------------------------------------------------
  function authHeaders() {
    const key = els.key.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function imagesForm(images) {
    const form = new FormData();
    // One image as `file`, several as repeated `files`: the two forms the API accepts.
    const field = images.length === 1 ? "file" : "files";
    for (const image of images) form.append(field, image.file, image.file.name);
    return form;
  }

  // One POST; resolves to {ok, status, body, ms} or {aborted: true}; never throws.
  async function callApi(kind, path, params) {
    if (state.inFlight[kind]) state.inFlight[kind].abort(); // only the newest answer counts
    const controller = new AbortController();
    state.inFlight[kind] = controller;
    const url = `${apiUrl(path)}?${new URLSearchParams(params)}`;
    const started = performance.now();
    try {
      const response = await fetch(url, {
        method: "POST",
        body: imagesForm(state.images),
        headers: authHeaders(),
        signal: controller.signal,
      });
      const text = await response.text();
      const ms = performance.now() - started;
      let body = null;
      try {
        body = JSON.parse(text);
      } catch {
        body = { error: "not_json", message: text.slice(0, 300) || response.statusText };
      }
      return { ok: response.ok, status: response.status, body, ms };
    } catch (err) {
      if (err.name === "AbortError") return { aborted: true };
      return { ok: false, status: 0, body: { error: "network_error", message: String(err.message || err) }, ms: 0 };
    } finally {
      if (state.inFlight[kind] === controller) state.inFlight[kind] = null;
    }
  }

  // --- errors ------------------------------------------------------------------------------
  function describeError(what, answer) {
    const body = answer.body || {};
    const message = body.message || "no message";
    if (answer.status === 401) {
      const given = els.key.value.trim() !== "";
      const advice = given
        ? "The API key was not accepted: check the API key field."
        : "This server requires an API key: enter it in the API key field at the top of the page.";
      return `${advice}\n${what}: ${message}`;
    }
    if (answer.status === 0) return `${what}: the server did not answer (${message}).`;
    const id = body.request_id ? ` (request ${body.request_id})` : "";
    return `${what} failed with ${answer.status} ${body.error || ""}: ${message}${id}`;
  }

  function setError(kind, text, answer) {
    if (text) state.errors[kind] = { text, status: answer.status, code: (answer.body || {}).error || "" };
    else delete state.errors[kind];
    const all = Object.values(state.errors);
    els.error.hidden = all.length === 0;
    // Both endpoints often fail the same way (a text file, a missing key): say it once.
    els.error.textContent = [...new Set(all.map((e) => e.text))].join("\n\n");
    const last = all[all.length - 1];
    els.error.dataset.status = last ? String(last.status) : "";
    els.error.dataset.code = last ? last.code : "";
  }

  function setMeta(el, stateName, text) {
    el.dataset.state = stateName;
    el.textContent = text;
  }

  function describeAnswer(answer) {
    const model = answer.body.model || {};
    const server = answer.body.timing ? ` (server ${answer.body.timing.total_ms.toFixed(1)} ms, ` +
      `inference ${answer.body.timing.inference_ms.toFixed(1)} ms)` : "";
    return `${model.name} v${model.version} · ${answer.ms.toFixed(0)} ms round trip${server}`;
  }

  // --- detection -----------------------------------------------------------------------------
  async function runDetect() {
    if (!state.images.length || !els.detectOn.checked) return;
    setMeta(els.detectMeta, "loading", "sending…");
    const answer = await callApi("detect", "detect-faces", {
      score_threshold: els.score.value,
      nms_iou: els.iou.value,
    });
    if (answer.aborted) return;
    if (!answer.ok) {
      setMeta(els.detectMeta, "error", `error ${answer.status}`);
      setError("detect", describeError("Face detection", answer), answer);
      state.images.forEach((image) => drawFaces(image, null));
    } else {
      setError("detect", "", answer);
      const model = answer.body.model || {};
      setMeta(els.detectMeta, "done", describeAnswer(answer));
      els.detectMeta.dataset.model = `${model.name}:${model.version}`;
      for (const result of answer.body.results) {
        const image = state.images[result.index];
        if (image) drawFaces(image, result);
      }
    }
    bump("detectRuns");
  }

  function lineWidthFor(bitmap) {
    return Math.max(2, Math.round(Math.max(bitmap.width, bitmap.height) / 250));
  }

  // An image of a several-image request that the API could not read has its own error entry
  // (`error`, `message`, `status`); the other images are answered as usual.
  function imageErrorText(result) {
    return `not read (${result.status} ${result.error}): ${result.message}`;
  }

  // Draw the image and, when given, the faces of `result` (API pixels of the original image).
  function drawFaces(image, result) {
    const { card, bitmap } = image;
    const canvas = card.querySelector("canvas");
    const summary = card.querySelector(".faces-summary");
    if (result && result.error) {
      card.dataset.imageError = result.error;
      card.dataset.faceCount = "0";
      card.dataset.boxes = "[]";
      summary.textContent = imageErrorText(result);
      return;
    }
    delete card.dataset.imageError;
    if (!bitmap) {
      card.dataset.faceCount = "0";
      card.dataset.boxes = "[]";
      summary.textContent = result ? `${result.faces.length} faces` : "";
      return;
    }
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(bitmap, 0, 0);
    if (!result) {
      card.dataset.faceCount = "0";
      card.dataset.boxes = "[]";
      summary.textContent = "";
      return;
    }
    // The canvas is the decoded image; should the browser's size differ from the API's
    // (EXIF handling), scale so the boxes still land on the same pixels.
    const sx = bitmap.width / result.width;
    const sy = bitmap.height / result.height;
    const lw = lineWidthFor(bitmap);
    const drawn = [];
    ctx.lineWidth = lw;
    ctx.font = `600 ${Math.max(12, lw * 6)}px system-ui, sans-serif`;
    ctx.textBaseline = "bottom";
    for (const face of result.faces) {
      const [x1, y1, x2, y2] = face.box;
      const box = [x1 * sx, y1 * sy, x2 * sx, y2 * sy];
      ctx.strokeStyle = FACE_COLOUR;
      ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
      const label = face.score.toFixed(2);
      const textWidth = ctx.measureText(label).width;
      const textHeight = Math.max(12, lw * 6) + 2;
      const ty = box[1] - textHeight >= 0 ? box[1] : box[1] + textHeight; // keep it on the canvas
      ctx.fillStyle = FACE_COLOUR;
      ctx.fillRect(box[0] - lw / 2, ty - textHeight, textWidth + 2 * lw, textHeight);
      ctx.fillStyle = "#000";
      ctx.fillText(label, box[0] + lw / 2, ty - 1);
      LANDMARK_NAMES.forEach((name, i) => {
        const [px, py] = face.landmarks[name];
        ctx.beginPath();
        ctx.arc(px * sx, py * sy, lw * 1.2, 0, 2 * Math.PI);
        ctx.fillStyle = LANDMARK_COLOURS[i];
        ctx.fill();
      });
      drawn.push(box.map((v) => Math.round(v * 10) / 10));
    }
    card.dataset.faceCount = String(drawn.length);
    card.dataset.boxes = JSON.stringify(drawn);
    const scores = result.faces.map((f) => f.score.toFixed(2)).join(", ");
    summary.textContent = drawn.length
      ? `${drawn.length} face${drawn.length === 1 ? "" : "s"} (scores ${scores}) · image ${result.width}×${result.height}`
      : `no face above the threshold · image ${result.width}×${result.height}`;
  }

  // --- classification ----------------------------------------------------------------------
  async function runClassify() {
    if (!state.images.length || !els.classifyOn.checked) return;
    setMeta(els.classifyMeta, "loading", "sending…");
    const answer = await callApi("classify", "classify", { top_k: els.topK.value });
    if (answer.aborted) return;
    if (!answer.ok) {
      setMeta(els.classifyMeta, "error", `error ${answer.status}`);
      setError("classify", describeError("Classification", answer), answer);
      state.images.forEach((image) => drawBars(image, null));
    } else {
      setError("classify", "", answer);
      const model = answer.body.model || {};
      setMeta(els.classifyMeta, "done", describeAnswer(answer));
      els.classifyMeta.dataset.model = `${model.name}:${model.version}`;
      for (const result of answer.body.results) {
        const image = state.images[result.index];
        if (image) drawBars(image, result);
      }
    }
    bump("classifyRuns");
  }

  function drawBars(image, result) {
    const bars = image.card.querySelector(".bars");
    bars.replaceChildren();
    if (!result) return;
    if (result.error) {
      image.card.dataset.imageError = result.error;
      const note = document.createElement("p");
      note.className = "image-error";
      note.textContent = imageErrorText(result);
      bars.append(note);
      return;
    }
    for (const entry of result.top_k) {
      const row = document.createElement("div");
      row.className = "bar-row";
      row.dataset.label = entry.label;
      row.dataset.probability = String(entry.probability);
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = entry.label;
      label.title = `${entry.label} (id ${entry.id})`;
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.width = `${(entry.probability * 100).toFixed(1)}%`;
      bar.append(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = `${(entry.probability * 100).toFixed(1)}%`;
      row.append(label, bar, value);
      bars.append(row);
    }
  }

  function bump(counter) {
    els.results.dataset[counter] = String(Number(els.results.dataset[counter] || 0) + 1);
  }

  // --- choosing images ---------------------------------------------------------------------
  async function decode(file) {
    try {
      return await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch {
      return null; // not an image the browser reads: still sent, the API says what it thinks
    }
  }

  function newCard(file, bitmap) {
    const card = els.template.content.firstElementChild.cloneNode(true);
    card.querySelector(".filename").textContent = file.name;
    const canvas = card.querySelector("canvas");
    if (bitmap) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
      canvas.setAttribute("aria-label", `${file.name} with detected faces`);
    } else {
      card.classList.add("unreadable");
      canvas.remove();
      card.querySelector(".figure").textContent = "The browser cannot show this file.";
    }
    return card;
  }

  async function setImages(files) {
    if (!files.length) return;
    const bitmaps = await Promise.all(files.map(decode));
    for (const image of state.images) image.bitmap?.close?.();
    state.images = files.map((file, i) => ({ file, bitmap: bitmaps[i], card: newCard(file, bitmaps[i]) }));
    state.errors = {};
    setError("detect", "", {});
    els.results.replaceChildren(...state.images.map((image) => image.card));
    state.images.forEach((image) => drawFaces(image, null));
    els.rerun.disabled = false;
    await runAll();
  }

  function runAll() {
    return Promise.all([runDetect(), runClassify()]);
  }

  async function loadSamples() {
    try {
      const response = await fetch(apiUrl("demo/samples"));
      const { samples } = await response.json();
      els.samples.replaceChildren();
      if (!samples.length) {
        showSampleNote("none on this server");
        return;
      }
      for (const sample of samples) {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.sample = sample.name;
        button.title = sample.name;
        const thumb = document.createElement("img");
        thumb.src = apiUrl(sample.url);
        thumb.alt = "";
        thumb.loading = "lazy";
        const caption = document.createElement("span");
        caption.textContent = sample.name;
        button.append(thumb, caption);
        button.addEventListener("click", () => useSample(sample));
        item.append(button);
        els.samples.append(item);
      }
    } catch {
      showSampleNote("could not list the samples");
    }
  }

  function showSampleNote(text) {
    const item = document.createElement("li");
    item.className = "muted";
    item.textContent = text;
    els.samples.replaceChildren(item);
  }

  async function useSample(sample) {
    const response = await fetch(apiUrl(sample.url));
    if (!response.ok) {
      setError("sample", `Could not load the sample ${sample.name} (${response.status}).`, {
        status: response.status,
      });
      return;
    }
    const blob = await response.blob();
    await setImages([new File([blob], sample.name, { type: blob.type })]);
  }

  // --- wiring --------------------------------------------------------------------------------
  function debounce(fn, ms) {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  }

  function showSliderValues() {
    els.scoreValue.textContent = Number(els.score.value).toFixed(2);
    els.iouValue.textContent = Number(els.iou.value).toFixed(2);
    els.topKValue.textContent = els.topK.value;
  }

  function wire() {
    els.key.value = sessionStorage.getItem(KEY_STORAGE) || "";
    els.key.addEventListener("input", () => sessionStorage.setItem(KEY_STORAGE, els.key.value));
    els.key.addEventListener("change", () => state.images.length && runAll());

    els.fileInput.addEventListener("change", () => {
      setImages([...els.fileInput.files]);
      els.fileInput.value = ""; // choosing the same file again still fires "change"
    });
    els.drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      els.drop.classList.add("dragging");
    });
    els.drop.addEventListener("dragleave", () => els.drop.classList.remove("dragging"));
    els.drop.addEventListener("drop", (event) => {
      event.preventDefault();
      els.drop.classList.remove("dragging");
      setImages([...event.dataTransfer.files]);
    });

    const detectSoon = debounce(runDetect, DEBOUNCE_MS);
    const classifySoon = debounce(runClassify, DEBOUNCE_MS);
    for (const slider of [els.score, els.iou]) {
      slider.addEventListener("input", () => {
        showSliderValues();
        detectSoon();
      });
    }
    els.topK.addEventListener("input", () => {
      showSliderValues();
      classifySoon();
    });
    els.detectOn.addEventListener("change", () => {
      if (els.detectOn.checked) return runDetect();
      setError("detect", "", {});
      state.images.forEach((image) => drawFaces(image, null));
    });
    els.classifyOn.addEventListener("change", () => {
      if (els.classifyOn.checked) return runClassify();
      setError("classify", "", {});
      state.images.forEach((image) => drawBars(image, null));
    });
    els.rerun.addEventListener("click", runAll);

    showSliderValues();
    loadSamples();
  }

  wire();
})();
