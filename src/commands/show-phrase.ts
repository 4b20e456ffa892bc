/**
 * `casa show-phrase`: reveals the recovery phrase kept in the keystore, after
 * a confirmation on a terminal or with --yes. The one command whose purpose
 * is to print a secret; it prints it to stdout and nowhere else.
 */
import { FailureError, UsageError } from '../errors.js';
import { SECRET_PHRASE } from '../state.js';
import { formatPhraseGrid } from '../ui/format.js';
import { confirm } from '../ui/prompts.js';
import { loadPaired, type Context } from './context.js';
import { CancelledError } from '../errors.js';

export async function runShowPhrase(ctx: Context): Promise<void> {
  const p = loadPaired(ctx);
  if (!ctx.globals.yes) {
    if (!ctx.out.interactive) {
      throw new UsageError('refusing to reveal the recovery phrase without confirmation', {
        hints: ['run it in a terminal, or pass --yes'],
      });
    }
    const ok = await confirm(
      ctx.out,
      'Show the recovery phrase? Anyone who sees it can read your finances.',
      'pass --yes',
    );
    if (!ok) throw new CancelledError('not shown');
  }
  const phrase = await p.keystore.get(SECRET_PHRASE);
  if (!phrase) {
    await p.keystore.probe();
    throw new FailureError(`the recovery phrase is not in the ${p.keystore.kind} keystore`, {
      hints: ['if another device is paired, run `casa show-phrase` there'],
    });
  }
  if (ctx.globals.json) {
    ctx.out.result({ message_type: 'phrase', vault_id: p.vault.vaultId, phrase });
  } else if (ctx.deps.term.stdout.isTTY) {
    ctx.deps.term.stdout.write(formatPhraseGrid(phrase.split(' ')) + '\n');
  } else {
    ctx.deps.term.stdout.write(phrase + '\n');
  }
}
