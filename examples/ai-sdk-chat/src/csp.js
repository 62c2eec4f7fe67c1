// The page's Content-Security-Policy forbids eval. Zod (the AI SDK validates every chunk with it)
// would probe for eval with `new Function`, which the browser reports as a violation; jitless
// skips the probe. Imported first, before any schema is used.
import { config } from 'zod';

config({ jitless: true });
