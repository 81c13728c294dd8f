// Grace's API explorer: Swagger UI over the gateway's own /openapi.json (no network besides
// the gateway). Paths are relative, so it also works behind a proxy that adds a prefix.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: new URL("../openapi.json", window.location.href.replace(/\/?$/, "/")).href,
    dom_id: "#swagger-ui",
    deepLinking: true,
    tryItOutEnabled: true,
    displayRequestDuration: true,
    defaultModelsExpandDepth: 0,
  });
});
