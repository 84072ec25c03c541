// The seed's decision tree, drawn from the advisor's own list of questions (rendered into
// the page by the server), with the path an answer took lit and each question's evidence.

import { h, variantLabel } from "./ui.js";

/**
 * tree: [{question, yes}] in the order asked; fitQuestion: the memory check after them;
 * answer: a recommendation (POST /v1/recommendations, or a job's decision record).
 */
export function renderTree(container, { tree, fit_question: fitQuestion }, answer) {
  const steps = new Map(answer.decision_path.map((s) => [s.question, s]));
  const pick = answer.decision_path.find((s) => s.decides && s.question !== fitQuestion);
  const evidence = (text) =>
    h("p", { class: text.length > 400 ? "evidence long" : "evidence", tabindex: text.length > 400 ? "0" : null }, text);
  const answerChip = (step) =>
    step ? h("span", { class: `answer ${step.answer}` }, step.answer === "yes" ? "Yes" : "No") : null;

  const items = tree.map(({ question, yes }) => {
    const step = steps.get(question);
    const decided = step && step.decides === yes;
    return h(
      "li",
      {
        class: step ? "asked" : null,
        dataset: { answer: step ? step.answer : "unasked" },
      },
      h(
        "div",
        { class: "node" },
        h("span", { class: "q" }, question),
        answerChip(step),
        h(
          "span",
          { class: decided ? "leaf decided" : "leaf", "aria-label": `yes leads to ${variantLabel(yes)}${decided ? " (chosen)" : ""}` },
          `yes → ${variantLabel(yes)}`,
        ),
      ),
      step ? evidence(step.evidence) : null,
    );
  });

  const fit = steps.get(fitQuestion);
  if (fit) {
    const keep = pick ? variantLabel(pick.decides) : "the pick";
    const over = answer.fits ? "" : " (still over the card: see the remedies)";
    const fallback =
      fit.answer === "no" && fit.decides ? `${answer.label}${over}` : "nothing fits: see the remedies";
    const yesLeaf = h("span", { class: fit.answer === "yes" ? "leaf decided" : "leaf" }, `yes → keep ${keep}`);
    const noLeaf = h("span", { class: fit.answer === "no" ? "leaf decided" : "leaf" }, `no → ${fallback}`);
    items.push(
      h(
        "li",
        { class: "asked", dataset: { answer: fit.answer } },
        h("div", { class: "node" }, h("span", { class: "q" }, fitQuestion), answerChip(fit), yesLeaf, noLeaf),
        evidence(fit.evidence),
      ),
    );
  }
  // The steps after the tree's own questions, in the order asked: ideas the settings call
  // for (rsLoRA from rank 64) and, with goal.serve_with, the server's rank limit and whether
  // it takes the adapter as trained.
  const drawn = new Set([...tree.map(({ question }) => question), fitQuestion]);
  for (const step of answer.decision_path.filter((s) => !drawn.has(s.question))) {
    const leaf = step.decides ? h("span", { class: "leaf decided" }, `→ ${variantLabel(step.decides)}`) : null;
    items.push(
      h(
        "li",
        { class: "asked", dataset: { answer: step.answer } },
        h("div", { class: "node" }, h("span", { class: "q" }, step.question), answerChip(step), leaf),
        evidence(step.evidence),
      ),
    );
  }
  container.replaceChildren(
    h("ol", { class: "tree", "aria-label": `Decision path: ${answer.label}` }, items),
  );
}
