// The Grace console: a hash-routed page per view, each built from the gateway's routes.
import { Unauthorized, setToken, token } from "./api.js";
import { pages } from "./pages.js";

const main = document.getElementById("main");
const login = document.getElementById("login");
const nav = document.getElementById("nav");
const menu = document.getElementById("menu");
let cleanups = [];

// What a page may hold open: streams and timers, stopped when the page is left.
const context = {
  keep(stop) { cleanups.push(stop); },
  every(fn, ms) { const id = setInterval(fn, ms); cleanups.push(() => clearInterval(id)); },
  unauthorized() { showLogin("The gateway needs a valid token."); },
};

function leave() {
  for (const stop of cleanups) stop();
  cleanups = [];
}

function showLogin(message = "") {
  leave();
  login.hidden = false;
  main.hidden = true;
  document.getElementById("login-error").textContent = message;
  document.getElementById("token").focus();
}

async function route() {
  leave();
  const name = (location.hash.replace(/^#\//, "") || "map").split("/")[0];
  const page = pages[name] || pages.map;
  for (const link of nav.querySelectorAll("a")) {
    if (link.id === `nav-${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  nav.classList.remove("open");
  menu.setAttribute("aria-expanded", "false");
  login.hidden = true;
  main.hidden = false;
  main.replaceChildren();
  main.dataset.page = name;
  try {
    await page(main, context);
  } catch (e) {
    if (e instanceof Unauthorized) showLogin("The gateway needs a valid token.");
    else main.append(Object.assign(document.createElement("p"), { className: "error", role: "alert", textContent: String(e.message || e) }));
  }
}

login.addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
  route();
});
document.getElementById("signout").addEventListener("click", () => {
  setToken("");
  showLogin("Signed out.");
});
menu.addEventListener("click", () => {
  const open = nav.classList.toggle("open");
  menu.setAttribute("aria-expanded", String(open));
});
window.addEventListener("hashchange", route);
document.getElementById("signout").hidden = false;
route();
export { token };
