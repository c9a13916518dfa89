// Injected by the test: drive the report app as a click would, and record what the browser rendered.
(function () {
  const out = {categories: [], figures: {}, tables: {}, errors: []};
  window.addEventListener("error", (ev) => out.errors.push(String(ev.message)));
  const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  function decode(uri) {
    const b64 = uri.slice(uri.indexOf("base64,") + 7);
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new TextDecoder("utf-8").decode(bytes);
  }
  const pre = document.createElement("pre");
  pre.id = "render-check";
  const flush = () => { pre.textContent = JSON.stringify(out); };
  async function check() {
    document.body.appendChild(pre);
    out.stage = "start"; flush();
    await wait(500);
    out.stage = "waited"; flush();
    out.categories = Object.keys(categories);
    out.navbar = document.body.innerText.slice(0, 2000);
    for (const [path, entry] of Object.entries(results)) {
      if (entry.mime_type === "image/png") {
        app.setView({content: "img", contentPath: entry.data_uri, resultPath: path});
        await wait(200);
        const img = document.querySelector('img[src="' + entry.data_uri.replace(/"/g, '\\"') + '"]');
        if (!img) { out.figures[path] = {shown: false}; continue; }
        for (let i = 0; i < 50 && !(img.complete && img.naturalWidth); i++) await wait(100);
        flush();
        out.figures[path] = {shown: true, width: img.naturalWidth, height: img.naturalHeight,
                             caption: (entry.caption || "").length};
      } else if (entry.mime_type === "text/html") {
        app.setView({content: "html", contentPath: entry.data_uri, resultPath: path});
        await wait(200);
        const frame = document.querySelector("iframe");
        const doc = new DOMParser().parseFromString(decode(entry.data_uri), "text/html");
        const tables = {};
        for (const t of doc.querySelectorAll("table")) {
          tables[t.id] = {rows: t.querySelectorAll("tbody tr").length,
                          header: Array.from(t.querySelectorAll("th")).map((th) => th.textContent),
                          text: t.innerText === undefined ? t.textContent : t.textContent};
          const holder = document.createElement("div");
          holder.className = "render-check-table";
          holder.appendChild(document.importNode(t, true));
          document.body.appendChild(holder);
        }
        out.tables[path] = {iframe: !!(frame && frame.src.startsWith("data:text/html")), tables: tables};
      }
    }
    out.stage = "done"; flush();
  }
  window.addEventListener("load", () => { check().catch((err) => { out.errors.push(String(err)); flush(); }); });
})();
