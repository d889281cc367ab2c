// Typeset the math that pymdownx.arithmatex (generic mode) wraps in `.arithmatex` elements:
// `\( ... \)` inline and `\[ ... \]` display. KaTeX is served from docs/vendor/katex, so this
// works offline. Material's instant navigation swaps page bodies without a reload; `document$`
// fires for each one.
(function () {
  "use strict";
  var options = {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false,
    strict: "ignore",
  };
  function typeset(root) {
    if (typeof renderMathInElement !== "function") {
      return;
    }
    root.querySelectorAll(".arithmatex").forEach(function (el) {
      renderMathInElement(el, options);
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () {
      typeset(document);
    });
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () {
      typeset(document);
    });
  } else {
    typeset(document);
  }
})();
