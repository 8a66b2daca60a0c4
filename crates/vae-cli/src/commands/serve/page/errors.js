// Errors are collected from the first moment, for the page's tests and the status line. A
// file of its own (loaded before app.js) so that the page's policy allows no inline script.
"use strict";
window.pageErrors = [];
window.addEventListener("error", (e) => {
  window.pageErrors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || e));
}, true);
window.addEventListener("unhandledrejection", (e) => window.pageErrors.push(String(e.reason)));
const consoleError = console.error;
console.error = (...args) => { window.pageErrors.push(args.join(" ")); consoleError.apply(console, args); };
