/** `vertex register USER@DOMAIN` and `vertex login USER@DOMAIN`. */
import type { Argv, CommandModule } from 'yargs';
import { formatAddress, parseAddress } from '../../q2q/address';
import { loginAccount, registerAccount, type NewIdentity } from '../../q2q/control/accounts';
import { openServerConnection } from '../../q2q/control/server-connection';
import { cliLogger, homeStore, serverResolver, type GlobalArgs } from '../context';
import { printResult } from '../output';
import { readPassword } from '../password-input';

interface AccountArgs extends GlobalArgs {
  address: string;
  passwordStdin?: boolean;
  passwordFile?: string;
  invite?: string;
}

function accountOptions(y: Argv): Argv<AccountArgs> {
  return y
    .positional('address', { type: 'string', demandOption: true, describe: 'user@domain' })
    .option('password-stdin', { type: 'boolean', describe: 'read the password from standard input' })
    .option('password-file', { type: 'string', describe: 'read the password from a file' }) as unknown as Argv<AccountArgs>;
}

async function run(args: AccountArgs, mode: 'register' | 'login'): Promise<void> {
  const address = formatAddress(parseAddress(args.address));
  const home = homeStore(args);
  const password = await readPassword(args, { confirm: mode === 'register', what: address });
  const connection = await openServerConnection({
    domain: parseAddress(address).domain,
    resolve: serverResolver(args),
    trust: home,
    log: cliLogger(args),
  });
  let identity: NewIdentity;
  try {
    identity = mode === 'register'
      ? await registerAccount(connection, address, password, args.invite)
      : await loginAccount(connection, address, password);
  } finally {
    connection.close();
  }
  home.saveIdentity(address, identity.keyPem, identity.certPem);
  const verb = mode === 'register' ? 'registered' : 'logged in as';
  printResult(args.json, `${verb} ${address}; certificate ${identity.serial} valid until ${identity.notAfter.toISOString()}; stored in ${home.identityDir(address)}`, {
    address, serial: identity.serial, notAfter: identity.notAfter.toISOString(), dir: home.identityDir(address),
  });
}

export const registerCommand: CommandModule<GlobalArgs, AccountArgs> = {
  command: 'register <address>',
  describe: 'create an account, a key pair and a certificate, stored in --home',
  builder: (y) => accountOptions(y).option('invite', { type: 'string', describe: 'invitation code, when the server is invite-only' }) as Argv<AccountArgs>,
  handler: (args) => run(args, 'register'),
};

export const loginCommand: CommandModule<GlobalArgs, AccountArgs> = {
  command: 'login <address>',
  describe: 'for an existing account on a new machine: a new key and certificate',
  builder: (y) => accountOptions(y),
  handler: (args) => run(args, 'login'),
};
