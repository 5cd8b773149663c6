/** Tailwind for the dashboard: colours come from CSS variables (web/src/app.css) so that one class works in
 * the dark "gold standard" theme and in the light theme. Build: `npm install && npm run build:css`. */
const v = (name) => `rgb(var(--${name}) / <alpha-value>)`;

module.exports = {
  content: ["./web/templates/**/*.html", "./web/static/js/**/*.js"],
  darkMode: "class",
  theme: {
    extend: {
      colors: {
        bg: v("bg"),
        panel: v("panel"),
        panel2: v("panel-2"),
        line: v("line"),
        ink: v("ink"),
        muted: v("muted"),
        gold: v("gold"),
        goldink: v("gold-ink"),
        ok: v("ok"),
        warn: v("warn"),
        bad: v("bad"),
      },
      fontFamily: {
        sans: ["Inter", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"],
        mono: ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
      },
    },
  },
  plugins: [],
};
