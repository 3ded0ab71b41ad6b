// Posts `gpufleet diff`'s Markdown as the pull request's one gpufleet comment: the comment whose body starts
// with the marker (infra/report/diff.py MARKER) is edited in place, so a PR keeps one comment however often
// it is pushed. Called from actions/github-script: `await require('./.github/scripts/pr-comment.js')({github,
// context, body})`. Only comments of the bot that posts this one are considered (nobody else's is edited).
const MARKER = "<!-- gpufleet-diff -->";
const BOT = "github-actions[bot]";

module.exports = async ({ github, context, body }) => {
  if (!body.startsWith(MARKER)) {
    throw new Error(`the comment body must start with ${MARKER} (gpufleet diff's Markdown)`);
  }
  const { owner, repo } = context.repo;
  const issue_number = context.issue.number;
  const comments = await github.paginate(github.rest.issues.listComments, {
    owner,
    repo,
    issue_number,
    per_page: 100,
  });
  const previous = comments.find((c) => c.user && c.user.login === BOT && (c.body || "").startsWith(MARKER));
  if (previous) {
    await github.rest.issues.updateComment({ owner, repo, comment_id: previous.id, body });
    return { action: "updated", id: previous.id };
  }
  const created = await github.rest.issues.createComment({ owner, repo, issue_number, body });
  return { action: "created", id: created.data.id };
};
