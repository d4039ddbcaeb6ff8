/** pino JSON logs; callers bind workflow/activity/job ids with `logger.child({...})`. */
import { pino } from 'pino';

export const logger = pino({
  name: 'vlmflow',
  level: process.env.VLMFLOW_LOG_LEVEL ?? 'info',
  base: { pid: process.pid },
  timestamp: pino.stdTimeFunctions.isoTime,
});

export type Logger = typeof logger;
