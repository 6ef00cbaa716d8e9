// A small, safe Markdown renderer for model output. Safety comes first: the text is
// HTML-escaped before any markup is added, and links are kept only for http(s) and
// mailto. Covers fenced and inline code, headings, bold, italic, lists, links and
// paragraphs; an unclosed fence (a reply still streaming) renders as code so far.
"use strict";

const axMarkdown = (() => {
  function escapeHtml(text) {
    return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  // Code spans are cut out first and put back last, so no other rule touches them.
  function inline(text, held) {
    const hold = (html) => `\u0000${held.push(html) - 1}\u0000`;
    text = text.replace(/`([^`\n]+)`/g, (_, code) => hold(`<code>${code}</code>`));
    text = text.replace(/\[([^\]\n]+)\]\(([^)\s]+)\)/g, (whole, label, url) =>
      /^(https?:|mailto:)/i.test(url)
        ? hold(`<a href="${url}" target="_blank" rel="noopener noreferrer">${label}</a>`)
        : whole);
    text = text.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>");
    text = text.replace(/__([^_\n]+)__/g, "<strong>$1</strong>");
    text = text.replace(/(^|[^*])\*([^*\n]+)\*/g, "$1<em>$2</em>");
    text = text.replace(/(^|[^\w_])_([^_\n]+)_(?!\w)/g, "$1<em>$2</em>");
    return text;
  }

  function restore(html, held) {
    return html.replace(/\u0000(\d+)\u0000/g, (_, i) => held[Number(i)]);
  }

  function render(source) {
    const held = [];
    // NUL marks held pieces below, so none may come from the text itself.
    const lines = escapeHtml(source.replace(/\u0000/g, "")).split("\n");
    const out = [];
    let paragraph = [];
    let list = null; // {tag, items}

    const flushParagraph = () => {
      if (paragraph.length) out.push(`<p>${paragraph.map((l) => inline(l, held)).join("<br>")}</p>`);
      paragraph = [];
    };
    const flushList = () => {
      if (list) out.push(`<${list.tag}>${list.items.map((i) => `<li>${inline(i, held)}</li>`).join("")}</${list.tag}>`);
      list = null;
    };

    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = line.match(/^\s*```\s*([\w+-]*)\s*$/);
      if (fence) {
        flushParagraph(); flushList();
        const body = [];
        for (i++; i < lines.length && !/^\s*```\s*$/.test(lines[i]); i++) body.push(lines[i]);
        const lang = fence[1] ? ` class="language-${fence[1]}"` : "";
        out.push(`<pre><code${lang}>${body.join("\n")}</code></pre>`);
        continue;
      }
      const heading = line.match(/^(#{1,6})\s+(.*)$/);
      const bullet = line.match(/^\s*[-*+]\s+(.*)$/);
      const numbered = line.match(/^\s*\d+[.)]\s+(.*)$/);
      if (heading) {
        flushParagraph(); flushList();
        const level = Math.min(heading[1].length + 2, 6); // h3..h6: smaller than the page title
        out.push(`<h${level}>${inline(heading[2], held)}</h${level}>`);
      } else if (bullet || numbered) {
        flushParagraph();
        const tag = bullet ? "ul" : "ol";
        if (!list || list.tag !== tag) { flushList(); list = { tag, items: [] }; }
        list.items.push((bullet || numbered)[1]);
      } else if (line.trim() === "") {
        flushParagraph(); flushList();
      } else {
        flushList();
        paragraph.push(line);
      }
    }
    flushParagraph(); flushList();
    return restore(out.join(""), held);
  }

  return { render, escapeHtml };
})();
