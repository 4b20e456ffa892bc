/**
 * `casa show-phrase`: reveals the recovery phrase kept in the keystore, after
 * a confirmation on a terminal or with --yes. The one command whose purpose
 * is to print a secret; it prints it to stdout and nowhere else. Devices keep
 * the phrase only when the user chose to (`pair --keep-phrase`, or a device
 * of casa 0.1 before its upgrade); `--forget` removes it.
 */
import { FailureError, UsageError } from '../errors.js';
import { SECRET_PHRASE, SECRET_ROOT_KEY } from '../state.js';
import { formatPhraseGrid } from '../ui/format.js';
import { confirm } from '../ui/prompts.js';
import { loadPaired, type Context } from './context.js';
import { CancelledError } from '../errors.js';

export async function runShowPhrase(ctx: Context, o: { forget?: boolean } = {}): Promise<void> {
  const p = loadPaired(ctx);
  if (o.forget) {
    const held = await p.keystore.get(SECRET_PHRASE);
    await p.keystore.delete(SECRET_PHRASE);
    await p.keystore.delete(SECRET_ROOT_KEY);
    ctx.out.print(held ? 'this device no longer keeps the recovery phrase: your paper is the copy' : 'this device did not keep the recovery phrase');
    ctx.out.result({ message_type: 'phrase_forgotten', vault_id: p.vault.vaultId, was_held: Boolean(held) });
    return;
  }
  const phrase0 = await p.keystore.get(SECRET_PHRASE);
  if (!phrase0) {
    await p.keystore.probe();
    throw new FailureError('this device does not keep the recovery phrase', {
      hints: [
        'devices keep only the vault keys: the phrase is on your paper (or in the file `pair --new --phrase-out` wrote)',
        'lost it? `casa rotate --phrase` needs the current phrase; without it, the devices still hold the data: pair new ones by code',
      ],
    });
  }
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
