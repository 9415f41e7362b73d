# Reference values for lacrima.meta (effect sizes and random-effects pooling).
#
# Run:  cd tests/reference && Rscript meta_reference.R
# Writes meta_reference.json next to this script. The tests read the JSON; they never run R.
# Produced with R 4.2 and metafor 3.8-1 from Debian bookworm
# (apt-get install r-base-core r-cran-metafor r-cran-psych).
# Every case records the exact metafor call that produced it in its "call" field.

suppressPackageStartupMessages({
  library(metafor)
  library(jsonlite)
})

fit_summary <- function(res, call) {
  pred <- predict(res)
  ci <- tryCatch(confint(res, type = "QP"), error = function(e) NULL)
  out <- list(
    call = call,
    method = res$method,
    test = res$test,
    k = res$k,
    estimate = as.numeric(res$b),
    se = res$se,
    ci_low = res$ci.lb,
    ci_high = res$ci.ub,
    statistic = res$zval,
    p_value = res$pval,
    tau2 = res$tau2,
    i2 = res$I2,
    h2 = res$H2,
    q = res$QE,
    q_p = res$QEp,
    pi_low = if (is.null(pred$pi.lb)) NA else pred$pi.lb,
    pi_high = if (is.null(pred$pi.ub)) NA else pred$pi.ub
  )
  if (!is.null(ci) && !is.null(ci$random)) {
    out$tau2_ci_low <- ci$random["tau^2", "ci.lb"]
    out$tau2_ci_high <- ci$random["tau^2", "ci.ub"]
  }
  out
}

cases <- list()

# 1. Molloy et al. (2014): correlations, Fisher z (metafor's analysis example and the
#    documentation of dat.molloy2014).
molloy <- escalc(measure = "ZCOR", ri = ri, ni = ni, data = dat.molloy2014)
molloy_in <- list(ri = dat.molloy2014$ri, ni = dat.molloy2014$ni,
                  yi = as.numeric(molloy$yi), vi = as.numeric(molloy$vi))
for (spec in list(c("REML", "knha"), c("REML", "z"), c("DL", "z"), c("DL", "knha"),
                  c("PM", "z"), c("PM", "knha"), c("FE", "z"))) {
  call <- sprintf('rma(yi, vi, data = escalc(measure = "ZCOR", ri = ri, ni = ni, data = dat.molloy2014), method = "%s", test = "%s")', spec[1], spec[2])
  res <- rma(yi, vi, data = molloy, method = spec[1], test = spec[2])
  cases[[paste("molloy2014", spec[1], spec[2], sep = "_")]] <- c(list(input = molloy_in), fit_summary(res, call))
}

# 2. BCG vaccine trials (dat.bcg): log risk ratios, the classic metafor example.
bcg <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
bcg_in <- list(yi = as.numeric(bcg$yi), vi = as.numeric(bcg$vi))
for (spec in list(c("REML", "z"), c("REML", "knha"), c("DL", "z"), c("PM", "z"))) {
  call <- sprintf('rma(yi, vi, data = escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg), method = "%s", test = "%s")', spec[1], spec[2])
  res <- rma(yi, vi, data = bcg, method = spec[1], test = spec[2])
  cases[[paste("bcg_rr", spec[1], spec[2], sep = "_")]] <- c(list(input = bcg_in), fit_summary(res, call))
}

# 3. dat.bcg as log odds ratios (tests the log OR effect size and its pooling).
bcg_or <- escalc(measure = "OR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
bcg_or_in <- list(ai = dat.bcg$tpos, bi = dat.bcg$tneg, ci = dat.bcg$cpos, di = dat.bcg$cneg,
                  yi = as.numeric(bcg_or$yi), vi = as.numeric(bcg_or$vi))
call <- 'rma(yi, vi, data = escalc(measure = "OR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg), method = "REML", test = "knha")'
res <- rma(yi, vi, data = bcg_or, method = "REML", test = "knha")
cases[["bcg_or_REML_knha"]] <- c(list(input = bcg_or_in), fit_summary(res, call))

# 4. Hackshaw et al. (1998): passive smoking, log odds ratios given as yi/vi.
hack_in <- list(yi = as.numeric(dat.hackshaw1998$yi), vi = as.numeric(dat.hackshaw1998$vi))
for (spec in list(c("REML", "knha"), c("DL", "z"))) {
  call <- sprintf('rma(yi, vi, data = dat.hackshaw1998, method = "%s", test = "%s")', spec[1], spec[2])
  res <- rma(yi, vi, data = dat.hackshaw1998, method = spec[1], test = spec[2])
  cases[[paste("hackshaw1998", spec[1], spec[2], sep = "_")]] <- c(list(input = hack_in), fit_summary(res, call))
}

# 5. Normand (1999): standardised mean differences (Hedges' g with the exact correction).
norm <- escalc(measure = "SMD", m1i = m1i, sd1i = sd1i, n1i = n1i, m2i = m2i, sd2i = sd2i, n2i = n2i,
               data = dat.normand1999)
norm_in <- list(m1i = dat.normand1999$m1i, sd1i = dat.normand1999$sd1i, n1i = dat.normand1999$n1i,
                m2i = dat.normand1999$m2i, sd2i = dat.normand1999$sd2i, n2i = dat.normand1999$n2i,
                yi = as.numeric(norm$yi), vi = as.numeric(norm$vi))
call <- 'rma(yi, vi, data = escalc(measure = "SMD", m1i = m1i, sd1i = sd1i, n1i = n1i, m2i = m2i, sd2i = sd2i, n2i = n2i, data = dat.normand1999), method = "REML", test = "knha")'
res <- rma(yi, vi, data = norm, method = "REML", test = "knha")
cases[["normand1999_smd_REML_knha"]] <- c(list(input = norm_in), fit_summary(res, call))

# 6. Small k: the first three and the first two Molloy studies (three sites is this study's k).
for (kk in c(3, 2)) {
  sub <- molloy[1:kk, ]
  sub_in <- list(yi = as.numeric(sub$yi), vi = as.numeric(sub$vi))
  for (spec in list(c("REML", "knha"), c("DL", "knha"), c("PM", "knha"))) {
    call <- sprintf('rma(yi, vi, data = escalc(measure = "ZCOR", ri = ri, ni = ni, data = dat.molloy2014)[1:%d, ], method = "%s", test = "%s")', kk, spec[1], spec[2])
    res <- rma(yi, vi, data = sub, method = spec[1], test = spec[2])
    cases[[sprintf("molloy2014_k%d_%s_%s", kk, spec[1], spec[2])]] <- c(list(input = sub_in), fit_summary(res, call))
  }
}

# 7. Partial correlations, Fisher z with vi = 1/(n - 3 - g) for g covariates. metafor's mi counts
#    every predictor of the regression, the focal one included, so mi = g + 1; it takes the
#    partial r through its t statistic on n - g - 2 df. Only yi is a reference here: metafor
#    3.8 gives vi = 1/(ni - mi - 1) = 1/(n - g - 2), while the protocol (section 7) uses
#    Fisher's 1/(n - 3 - g); the tests check vi against the protocol formula instead.
pcor_in <- list(ri = c(0.25, -0.1, 0.4), ni = c(106, 100, 124), gi = c(3, 3, 3))
ti <- pcor_in$ri * sqrt(pcor_in$ni - pcor_in$gi - 2) / sqrt(1 - pcor_in$ri^2)
pz <- escalc(measure = "ZPCOR", ti = ti, ni = pcor_in$ni, mi = pcor_in$gi + 1)
pcor_in$yi <- as.numeric(pz$yi)
pcor_in$vi <- as.numeric(pz$vi)
cases[["zpcor_escalc"]] <- list(
  call = 'ti <- ri * sqrt(ni - gi - 2) / sqrt(1 - ri^2); escalc(measure = "ZPCOR", ti = ti, ni = ni, mi = gi + 1) with ri = c(0.25, -0.1, 0.4), ni = c(106, 100, 124), gi = c(3, 3, 3)',
  input = pcor_in)

meta <- list(R = R.version.string, metafor = as.character(packageVersion("metafor")))
write_json(list(meta = meta, cases = cases), "meta_reference.json", auto_unbox = TRUE,
           digits = NA, pretty = TRUE, na = "null")
