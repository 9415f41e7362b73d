# Reference values for lacrima.stats (per-site estimators, protocol section 6).
#
# Run:  cd tests/reference && Rscript stats_reference.R
# Writes stats_reference.json next to this script. The tests read the JSON; they never run R.
# Produced with R 4.2.2, psych 2.2.9, metafor 3.8-1, sandwich 3.0-2, lmtest (Debian bookworm).
# Every case stores its input data and, in "call", the exact R call that produced each value.

suppressPackageStartupMessages({
  library(jsonlite)
  library(psych)
  library(metafor)
  library(sandwich)
  library(lmtest)
})

set.seed(20240601)
out <- list()

# ---- correlations -----------------------------------------------------------------
n <- 30
z1 <- round(rnorm(n), 3)
z2 <- round(rnorm(n), 3)
x <- round(0.5 * z1 + rnorm(n), 3)
y <- round(0.4 * x + 0.3 * z1 - 0.3 * z2 + rnorm(n), 3)
ct <- cor.test(x, y, method = "pearson", conf.level = 0.95)
st <- suppressWarnings(cor.test(x, y, method = "spearman", exact = FALSE))
pr <- psych::partial.r(data.frame(x, y, z1, z2), c(1, 2), c(3, 4))
out$correlation <- list(
  x = x, y = y, z1 = z1, z2 = z2,
  call_pearson = "cor.test(x, y, method = 'pearson', conf.level = 0.95)",
  pearson_r = unname(ct$estimate), pearson_ci = unname(ct$conf.int[1:2]),
  pearson_t = unname(ct$statistic), pearson_df = unname(ct$parameter), pearson_p = ct$p.value,
  call_spearman = "cor.test(x, y, method = 'spearman', exact = FALSE)",
  spearman_rho = unname(st$estimate), spearman_p = st$p.value,
  call_partial = "psych::partial.r(data.frame(x, y, z1, z2), c(1, 2), c(3, 4))[1, 2]",
  partial_r = pr[1, 2]
)

# ---- two groups -------------------------------------------------------------------
g1 <- round(rnorm(40, 3.4, 0.7), 1)
g2 <- round(rnorm(15, 3.0, 0.9), 1)
tt <- t.test(g1, g2, var.equal = FALSE, conf.level = 0.95)
wt <- suppressWarnings(wilcox.test(g1, g2, exact = FALSE, correct = TRUE))
es <- metafor::escalc("SMD", m1i = mean(g1), sd1i = sd(g1), n1i = length(g1),
                      m2i = mean(g2), sd2i = sd(g2), n2i = length(g2))
bor <- metafor::escalc("SMD", m1i = 103, sd1i = 5.5, n1i = 50, m2i = 100, sd2i = 4.5, n2i = 50)
out$groups <- list(
  g1 = g1, g2 = g2,
  call_welch = "t.test(g1, g2, var.equal = FALSE, conf.level = 0.95)",
  welch_diff = unname(tt$estimate[1] - tt$estimate[2]), welch_ci = unname(tt$conf.int[1:2]),
  welch_t = unname(tt$statistic), welch_df = unname(tt$parameter), welch_p = tt$p.value,
  call_wilcox = "wilcox.test(g1, g2, exact = FALSE, correct = TRUE)",
  wilcox_w = unname(wt$statistic), wilcox_p = wt$p.value,
  call_smd = "metafor::escalc('SMD', m1i = mean(g1), sd1i = sd(g1), n1i = length(g1), m2i = mean(g2), sd2i = sd(g2), n2i = length(g2))",
  smd_yi = as.numeric(es$yi), smd_vi = as.numeric(es$vi),
  call_smd_borenstein = "metafor::escalc('SMD', m1i = 103, sd1i = 5.5, n1i = 50, m2i = 100, sd2i = 4.5, n2i = 50)",
  borenstein_yi = as.numeric(bor$yi), borenstein_vi = as.numeric(bor$vi)
)

# ---- 2x2 tables -------------------------------------------------------------------
tab_large <- matrix(c(60, 12, 18, 10), nrow = 2, byrow = TRUE)   # woman yes/no, man yes/no
tab_small <- matrix(c(9, 1, 3, 4), nrow = 2, byrow = TRUE)
tab_zero <- matrix(c(12, 0, 5, 3), nrow = 2, byrow = TRUE)
tables <- list(large = tab_large, small = tab_small, zero = tab_zero)
out$tables <- lapply(tables, function(tab) {
  cs <- suppressWarnings(chisq.test(tab, correct = FALSE))
  ft <- fisher.test(tab, conf.level = 0.95)
  cells <- as.numeric(t(tab))
  if (any(cells == 0)) cells <- cells + 0.5           # Haldane, as lacrima.stats
  lor <- log(cells[1] * cells[4] / (cells[2] * cells[3]))
  se <- sqrt(sum(1 / cells))
  list(
    table = tab,
    call_chisq = "chisq.test(tab, correct = FALSE)",
    chi2 = unname(cs$statistic), chi2_p = cs$p.value,
    call_fisher = "fisher.test(tab, conf.level = 0.95)",
    fisher_or = unname(ft$estimate), fisher_ci = ft$conf.int[1:2], fisher_p = ft$p.value,
    call_woolf = "exp(log(a*d/(b*c)) + c(-1, 1) * qnorm(0.975) * sqrt(1/a + 1/b + 1/c + 1/d)), 0.5 added to every cell when one is 0",
    woolf_or = exp(lor), woolf_ci = exp(lor + c(-1, 1) * qnorm(0.975) * se)
  )
})

# ---- OLS with HC3 -----------------------------------------------------------------
m <- 40
d <- data.frame(p1 = round(rnorm(m), 2), p2 = round(rnorm(m), 2), p3 = round(runif(m, 1, 5), 1))
d$y <- round(1 + 0.5 * d$p1 - 0.3 * d$p2 + 0.2 * d$p3 + rnorm(m) * (0.5 + abs(d$p1)), 2)
fit <- lm(y ~ p1 + p2 + p3, data = d)
v3 <- sandwich::vcovHC(fit, type = "HC3")
ctab <- lmtest::coeftest(fit, vcov. = v3)
cci <- lmtest::coefci(fit, vcov. = v3, level = 0.95)
zd <- as.data.frame(scale(d))
zfit <- lm(y ~ p1 + p2 + p3, data = zd)
zv3 <- sandwich::vcovHC(zfit, type = "HC3")
zctab <- lmtest::coeftest(zfit, vcov. = zv3)
zcci <- lmtest::coefci(zfit, vcov. = zv3, level = 0.95)
out$regression <- list(
  data = d,
  call = "fit <- lm(y ~ p1 + p2 + p3, d); lmtest::coeftest(fit, vcov. = sandwich::vcovHC(fit, type = 'HC3')); lmtest::coefci(fit, vcov. = sandwich::vcovHC(fit, type = 'HC3'))",
  b = unname(ctab[, 1]), se = unname(ctab[, 2]), t = unname(ctab[, 3]), p = unname(ctab[, 4]),
  ci_low = unname(cci[, 1]), ci_high = unname(cci[, 2]), df_resid = fit$df.residual,
  r2 = summary(fit)$r.squared,
  call_standardized = "zfit <- lm(y ~ p1 + p2 + p3, as.data.frame(scale(d))); the same coeftest/coefci with vcovHC(zfit, type = 'HC3')",
  beta = unname(zctab[-1, 1]), beta_se = unname(zctab[-1, 2]), beta_p = unname(zctab[-1, 4]),
  beta_ci_low = unname(zcci[-1, 1]), beta_ci_high = unname(zcci[-1, 2])
)

# ---- Cronbach's alpha -------------------------------------------------------------
k <- 6
nn <- 50
true <- rnorm(nn)
items <- sapply(1:k, function(j) pmin(5, pmax(1, round(3 + true + rnorm(nn, 0, 1)))))
colnames(items) <- paste0("i", 1:k)
al <- suppressWarnings(psych::alpha(as.data.frame(items)))
out$alpha <- list(
  items = items,
  call = "psych::alpha(as.data.frame(items))$total$raw_alpha and $feldt (lower.ci, upper.ci)",
  alpha = al$total$raw_alpha,
  feldt_low = as.numeric(al$feldt$lower.ci), feldt_high = as.numeric(al$feldt$upper.ci)
)

# ---- Holm -------------------------------------------------------------------------
praw <- c(0.001, 0.04, 0.03, 0.2, 0.012, 0.5, 0.049, 0.0001)
out$holm <- list(p = praw, call = "p.adjust(p, method = 'holm')",
                 adjusted = p.adjust(praw, method = "holm"))

writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE, matrix = "rowmajor",
                  dataframe = "columns"), "stats_reference.json")
